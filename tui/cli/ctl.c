#include "tui/cli/ctl.h"
#include "engine/core/clock.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "engine/protocol/record.h"

enum {
    CTL_OK = 0,
    CTL_FAILED = 1,
    CTL_USAGE = 2,
    /* Step records carry the whole expert-load matrix; anything past this
     * is not a record from moectl. */
    CTL_RECORD_MAX = 16 << 20,
};

static int ctl_connect(const char *socket_path, FILE *err)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(socket_path) >= sizeof addr.sun_path) {
        fprintf(err, "moectl ctl: cannot connect to %s: path too long for a "
                     "Unix socket (limit %zu bytes)\n",
                socket_path, sizeof addr.sun_path - 1);
        return -1;
    }
    memcpy(addr.sun_path, socket_path, strlen(socket_path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) {
        fprintf(err, "moectl ctl: socket: %s\n", strerror(errno));
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        fprintf(err, "moectl ctl: cannot connect to %s: %s\n", socket_path,
                strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static int ctl_send_line(int fd, const char *line)
{
    size_t len = strlen(line);
    char *buf = malloc(len + 1);
    if (!buf)
        return -1;
    memcpy(buf, line, len);
    buf[len] = '\n';
    size_t sent = 0;
    while (sent < len + 1) {
        ssize_t n = send(fd, buf + sent, len + 1 - sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            free(buf);
            return -1;
        }
        sent += (size_t)n;
    }
    free(buf);
    return 0;
}

/* Handles one record: returns -1 to keep reading (not a reply), or the exit
 * status. */
static int ctl_record(const char *socket_path, const char *text, FILE *out,
                      FILE *err)
{
    record_value record;
    char why[256];
    int decoded = record_decode(text, &record, why, sizeof why) == 0;
    if (!decoded && !record.json) {
        fprintf(err, "moectl ctl: %s sent a line that is not a JSON record: "
                     "%s\n", socket_path, why);
        record_free(&record);
        return CTL_FAILED;
    }
    if (!decoded || record.type != RECORD_TYPE_REPLY) {
        record_free(&record);
        return -1;
    }
    int status;
    if (record_bool(&record, RECORD_REPLY_ok)) {
        const char *message = record_string(&record, RECORD_REPLY_message);
        fprintf(out, "%s\n", message && *message ? message : "ok");
        status = CTL_OK;
    } else {
        const char *error = record_string(&record, RECORD_REPLY_error);
        fprintf(err, "moectl ctl: %s\n", error ? error : "command failed");
        status = CTL_FAILED;
    }
    fflush(out);
    record_free(&record);
    return status;
}

/* Reads records until the reply; status as ctl_request. */
static int ctl_await_reply(int fd, const char *socket_path, int timeout_ms,
                           FILE *out, FILE *err)
{
    size_t cap = 64 * 1024, len = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        fprintf(err, "moectl ctl: out of memory\n");
        return CTL_FAILED;
    }
    long long deadline = clock_monotonic_ms() + timeout_ms;
    int status = -1;
    while (status < 0) {
        /* Every complete line in the buffer first. */
        char *newline;
        while (status < 0 && (newline = memchr(buf, '\n', len))) {
            *newline = '\0';
            status = ctl_record(socket_path, buf, out, err);
            size_t used = (size_t)(newline - buf) + 1;
            memmove(buf, buf + used, len - used);
            len -= used;
        }
        if (status >= 0)
            break;
        if (len == cap) {
            if (cap >= CTL_RECORD_MAX) {
                fprintf(err, "moectl ctl: %s sent a record longer than %d "
                             "bytes\n", socket_path, CTL_RECORD_MAX);
                status = CTL_FAILED;
                break;
            }
            char *grown = realloc(buf, cap * 2 + 1);
            if (!grown) {
                fprintf(err, "moectl ctl: out of memory\n");
                status = CTL_FAILED;
                break;
            }
            buf = grown;
            cap *= 2;
        }
        long long left_ms = deadline - clock_monotonic_ms();
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int ready = left_ms > 0 ? poll(&pfd, 1, (int)left_ms) : 0;
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready == 0) {
            fprintf(err, "moectl ctl: no reply from %s within %g s\n",
                    socket_path, timeout_ms / 1000.0);
            status = CTL_FAILED;
            break;
        }
        ssize_t n = ready < 0 ? -1 : recv(fd, buf + len, cap - len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(err, "moectl ctl: reading from %s: %s\n", socket_path,
                    strerror(errno));
            status = CTL_FAILED;
        } else if (n == 0) {
            fprintf(err, "moectl ctl: %s closed the connection before "
                         "replying\n", socket_path);
            status = CTL_FAILED;
        } else {
            len += (size_t)n;
        }
    }
    free(buf);
    return status;
}

int ctl_request(const char *socket_path, const char *line, int timeout_ms,
                FILE *out, FILE *err)
{
    int fd = ctl_connect(socket_path, err);
    if (fd < 0)
        return CTL_FAILED;
    int status;
    if (ctl_send_line(fd, line) < 0) {
        fprintf(err, "moectl ctl: sending to %s: %s\n", socket_path,
                strerror(errno));
        status = CTL_FAILED;
    } else {
        status = ctl_await_reply(fd, socket_path, timeout_ms, out, err);
    }
    close(fd);
    return status;
}

int ctl_run(const char *socket_path, int argc, char **argv)
{
    if (!socket_path || !*socket_path || argc < 1) {
        fprintf(stderr, "usage: moectl ctl SOCKET COMMAND...\n");
        return CTL_USAGE;
    }
    size_t len = 0;
    for (int i = 0; i < argc; i++) {
        if (strpbrk(argv[i], "\r\n")) {
            fprintf(stderr, "moectl ctl: a command is one line; \"%s\" holds "
                            "a line break\n", argv[i]);
            return CTL_USAGE;
        }
        len += strlen(argv[i]) + 1;
    }
    char *line = malloc(len);
    if (!line) {
        fprintf(stderr, "moectl ctl: out of memory\n");
        return CTL_FAILED;
    }
    char *p = line;
    for (int i = 0; i < argc; i++) {
        size_t n = strlen(argv[i]);
        memcpy(p, argv[i], n);
        p += n;
        *p++ = i + 1 < argc ? ' ' : '\0';
    }
    int status = ctl_request(socket_path, line, CTL_TIMEOUT_MS, stdout, stderr);
    free(line);
    return status;
}
