#include "tui/job/client.h"
#include "engine/core/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum { FIRST_BUFFER_BYTES = 64 * 1024, SEND_WAIT_MS = 5000 };

void job_client_init(job_client *c)
{
    memset(c, 0, sizeof *c);
    c->fd = -1;
}

int job_client_connect(job_client *c, const char *socket_path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(socket_path) >= sizeof addr.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(addr.sun_path, socket_path, strlen(socket_path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    /* Non-blocking: a job that does not accept (its rank 0 stopped, its
     * backlog full) makes connect fail with EAGAIN rather than block; it
     * is retried until JOB_CONNECT_TIMEOUT_MS, then ETIMEDOUT. Reads never
     * block either: job_client_read waits in poll, with a limit. */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    long long deadline = clock_monotonic_ms() + JOB_CONNECT_TIMEOUT_MS;
    while (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int saved = errno;
        if (saved == EINTR)
            continue;
        if (saved == EAGAIN && clock_monotonic_ms() < deadline) {
            struct timespec nap = {0, 20 * 1000 * 1000};
            nanosleep(&nap, NULL);
            continue;
        }
        close(fd);
        errno = saved == EAGAIN ? ETIMEDOUT : saved;
        return -1;
    }
    c->fd = fd;
    c->len = 0;
    c->dropping = 0;
    return 0;
}

int job_client_send(job_client *c, const char *line)
{
    if (c->fd < 0) {
        errno = ENOTCONN;
        return -1;
    }
    size_t len = strlen(line);
    char *text = malloc(len + 1);
    if (!text)
        return -1;
    memcpy(text, line, len);
    text[len] = '\n';
    size_t sent = 0;
    int status = 0;
    while (sent < len + 1) {
        ssize_t n = send(c->fd, text + sent, len + 1 - sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            /* A job that reads nothing for this long is not coming back. */
            struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};
            int ready = poll(&pfd, 1, SEND_WAIT_MS);
            if (ready == 0)
                errno = ETIMEDOUT;
            if (ready > 0 || (ready < 0 && errno == EINTR))
                continue;
            status = -1;
            break;
        }
        if (n < 0) {
            status = -1;
            break;
        }
        sent += (size_t)n;
    }
    int saved = errno;
    free(text);
    errno = saved;
    return status;
}

/* Room for more bytes: the buffer doubles up to JOB_CLIENT_LINE_MAX; a
 * line that outgrows it is dropped up to its newline. */
static int make_room(job_client *c)
{
    if (!c->buf) {
        c->buf = malloc(FIRST_BUFFER_BYTES + 1);
        if (!c->buf)
            return -1;
        c->cap = FIRST_BUFFER_BYTES;
    }
    if (c->len < c->cap)
        return 0;
    if (c->cap >= JOB_CLIENT_LINE_MAX) {
        c->dropped_lines += !c->dropping;
        c->len = 0;
        c->dropping = 1;
        return 0;
    }
    char *grown = realloc(c->buf, c->cap * 2 + 1);
    if (!grown)
        return -1;
    c->buf = grown;
    c->cap *= 2;
    return 0;
}

/* Hands each complete line in the buffer to on_line; returns 1 when it
 * asked to stop (the lines after it stay buffered). */
static int hand_lines(job_client *c, job_client_line_fn on_line, void *ctx)
{
    size_t start = 0;
    int stop = 0;
    char *nl;
    while (!stop && (nl = memchr(c->buf + start, '\n', c->len - start))) {
        *nl = '\0';
        if (c->dropping)
            c->dropping = 0; /* the tail of a dropped line */
        else
            stop = on_line(ctx, c->buf + start) != 0;
        start = (size_t)(nl - c->buf) + 1;
    }
    memmove(c->buf, c->buf + start, c->len - start);
    c->len -= start;
    return stop;
}

job_client_status job_client_read(job_client *c, int wait_ms,
                                  job_client_line_fn on_line, void *ctx)
{
    if (c->fd < 0) {
        errno = ENOTCONN;
        return JOB_CLIENT_FAILED;
    }
    if (c->buf && hand_lines(c, on_line, ctx))
        return JOB_CLIENT_STOPPED;
    if (wait_ms > 0) {
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        if (poll(&pfd, 1, wait_ms) < 0 && errno != EINTR)
            return JOB_CLIENT_FAILED;
    }
    for (;;) {
        if (make_room(c) < 0)
            return JOB_CLIENT_FAILED;
        ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (n == 0)
            return JOB_CLIENT_CLOSED;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK
                       ? JOB_CLIENT_OPEN
                       : JOB_CLIENT_FAILED;
        c->len += (size_t)n;
        if (hand_lines(c, on_line, ctx))
            return JOB_CLIENT_STOPPED;
    }
}

void job_client_close(job_client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c->buf);
    job_client_init(c);
}
