/* tui/job/client.c against a real Unix socket: lines split across reads
 * arrive whole, a handler that stops leaves the rest buffered for the next
 * read, a line over JOB_CLIENT_LINE_MAX is dropped (and counted) without
 * losing the next one, sends arrive with their newline, and a closed peer
 * reads as closed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "tui/job/client.h"

#include "tests/expect.h"

enum { LINES_MAX = 16 };

typedef struct collected {
    char lines[LINES_MAX][64];
    size_t lengths[LINES_MAX];
    int count;
    int stop_after;   /* stop after this many lines; 0: never */
} collected;

static int collect(void *ctx, const char *line)
{
    collected *c = ctx;
    if (c->count < LINES_MAX) {
        c->lengths[c->count] = strlen(line);
        snprintf(c->lines[c->count], sizeof c->lines[0], "%s", line);
    }
    c->count++;
    return c->stop_after && c->count >= c->stop_after;
}

static int listen_on(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 ||
        listen(fd, 1) < 0) {
        perror("listen");
        exit(1);
    }
    return fd;
}

static void put(int fd, const char *text, size_t len)
{
    size_t sent = 0;
    while (sent < len) {
        ssize_t n = send(fd, text + sent, len - sent, MSG_NOSIGNAL);
        if (n <= 0) {
            perror("send");
            exit(1);
        }
        sent += (size_t)n;
    }
}

/* Reads until count lines came in all (or 200 tries). */
static void read_lines(job_client *client, collected *c, int count)
{
    for (int tries = 0; c->count < count && tries < 200; tries++)
        job_client_read(client, 50, collect, c);
}

static void check_lines_and_stop(job_client *client, int peer)
{
    collected c = {.stop_after = 2};
    put(peer, "{\"a\":1}\n{\"b\"", 12);
    put(peer, ":2}\n{\"c\":3}\npartial", 19);
    job_client_status status = JOB_CLIENT_OPEN;
    for (int tries = 0; c.count < 2 && tries < 200; tries++)
        status = job_client_read(client, 50, collect, &c);
    EXPECT(status == JOB_CLIENT_STOPPED, "status %d, want stopped", status);
    EXPECT(c.count == 2 && strcmp(c.lines[0], "{\"a\":1}") == 0 &&
               strcmp(c.lines[1], "{\"b\":2}") == 0,
           "%d lines: %s | %s", c.count, c.lines[0], c.lines[1]);
    /* The third line was buffered; the partial one waits for its end. */
    c.stop_after = 0;
    job_client_read(client, 0, collect, &c);
    EXPECT(c.count == 3 && strcmp(c.lines[2], "{\"c\":3}") == 0,
           "after the stop: %d lines, last %s", c.count, c.lines[2]);
    put(peer, " line\n", 6);
    read_lines(client, &c, 4);
    EXPECT(c.count == 4 && strcmp(c.lines[3], "partial line") == 0,
           "the partial line: %s", c.lines[3]);
}

static void check_too_long(job_client *client, int peer)
{
    size_t len = JOB_CLIENT_LINE_MAX + 1000;
    char *big = malloc(len + 1);
    if (!big)
        exit(1);
    memset(big, 'x', len);
    big[len] = '\n';
    collected c = {0};
    /* The peer writes while the client reads: the socket buffer is small. */
    size_t sent = 0;
    int tries = 0;
    while (sent < len + 1 && tries++ < 100000) {
        ssize_t n = send(peer, big + sent, len + 1 - sent,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0)
            sent += (size_t)n;
        job_client_read(client, 0, collect, &c);
    }
    free(big);
    put(peer, "after\n", 6);
    read_lines(client, &c, 1);
    EXPECT(client->dropped_lines == 1, "%d lines dropped, want 1",
           client->dropped_lines);
    EXPECT(c.count == 1 && strcmp(c.lines[0], "after") == 0,
           "after a dropped line: %d lines, first \"%s\"", c.count,
           c.lines[0]);
}

static void check_send(job_client *client, int peer)
{
    EXPECT(job_client_send(client, "status") == 0, "send: %s",
           strerror(errno));
    char got[16] = "";
    ssize_t n = recv(peer, got, sizeof got - 1, 0);
    EXPECT(n == 7 && memcmp(got, "status\n", 7) == 0, "sent %zd bytes: %s",
           n, got);
}

int main(void)
{
    char dir[] = "/tmp/moectl-test-client-XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    char path[96];
    snprintf(path, sizeof path, "%s/control.sock", dir);
    job_client client;
    job_client_init(&client);
    EXPECT(job_client_connect(&client, path) < 0 && errno == ENOENT,
           "connect to nothing: errno %d", errno);
    char long_path[200];
    memset(long_path, 'a', sizeof long_path - 1);
    long_path[sizeof long_path - 1] = '\0';
    EXPECT(job_client_connect(&client, long_path) < 0 &&
               errno == ENAMETOOLONG,
           "a path too long: errno %d", errno);

    int server = listen_on(path);
    EXPECT(job_client_connect(&client, path) == 0, "connect: %s",
           strerror(errno));
    int peer = accept(server, NULL, NULL);
    check_lines_and_stop(&client, peer);
    check_too_long(&client, peer);
    check_send(&client, peer);
    close(peer);
    collected c = {0};
    job_client_status status = JOB_CLIENT_OPEN;
    for (int tries = 0; status == JOB_CLIENT_OPEN && tries < 100; tries++)
        status = job_client_read(&client, 50, collect, &c);
    EXPECT(status == JOB_CLIENT_CLOSED, "after the peer closed: %d", status);
    job_client_close(&client);
    EXPECT(client.fd == -1 && client.buf == NULL, "close leaves it open");
    close(server);
    unlink(path);
    rmdir(dir);
    if (failures)
        printf("%d failures\n", failures);
    else
        printf("ok\n");
    return failures != 0;
}
