/* The control socket: an in-process server against real client sockets,
 * and `moectl ctl` (ctl_request, ctl_run) against it from a thread. */
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "engine/protocol/control.h"
#include "engine/protocol/record.h"
#include "tui/cli/ctl.h"

#include "tests/expect.h"

enum { WAIT_MS = 5000 };
#define TEST_RUN_ID "test-20261203T000000Z-1"

static const command_limits limits = {.layers = 4, .experts = 8, .ranks = 3};
static char base_dir[] = "/tmp/moectl-test-XXXXXX";

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec t = {0, (long)ms * 1000000L};
    nanosleep(&t, NULL);
}

static control_server *open_server(void)
{
    control_server *s = NULL;
    moe_error err = {""};
    if (control_open(&s, NULL, &err) < 0) {
        printf("FAIL: control_open: %s\n", err.message);
        exit(1);
    }
    control_set_run_id(s, TEST_RUN_ID);
    return s;
}

/* A client with its own line buffer. */
typedef struct test_client {
    int fd;
    size_t len;
    char buf[8192];
} test_client;

static void client_connect(test_client *c, const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    c->len = 0;
    c->fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        printf("FAIL: cannot connect to %s: %s\n", path, strerror(errno));
        exit(1);
    }
}

static void client_close(test_client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static void client_send(test_client *c, const char *data, size_t len)
{
    size_t sent = 0;
    while (sent < len) {
        ssize_t n = send(c->fd, data + sent, len - sent, MSG_NOSIGNAL);
        if (n <= 0) {
            printf("FAIL: client send: %s\n", strerror(errno));
            exit(1);
        }
        sent += (size_t)n;
    }
}

static void client_say(test_client *c, const char *text)
{
    client_send(c, text, strlen(text));
}

/* Reads one line (without its newline) into line, running the server's
 * poll meanwhile (without taking requests). 1: a line, 0: end of stream,
 * -1: nothing within timeout_ms. */
static int client_read_line(test_client *c, control_server *s, char *line,
                            size_t size, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        char *newline = memchr(c->buf, '\n', c->len);
        if (newline) {
            size_t n = (size_t)(newline - c->buf);
            snprintf(line, size, "%.*s", (int)n, c->buf);
            memmove(c->buf, newline + 1, c->len - n - 1);
            c->len -= n + 1;
            return 1;
        }
        if (now_ms() > deadline)
            return -1;
        if (s)
            control_poll(s, &limits, NULL, 0);
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        if (poll(&pfd, 1, 1) > 0) {
            ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
            if (n == 0)
                return 0;
            if (n > 0)
                c->len += (size_t)n;
        }
    }
}

/* A reply follows the schema, carries this server's run_id and a time
 * near now; the text compared is the record without those three fields. */
static void strip_reply_stamp(char *line, size_t size, int line_number)
{
    record_value r;
    char why[256];
    if (record_decode(line, &r, why, sizeof why) < 0 ||
        r.type != RECORD_TYPE_REPLY) {
        record_free(&r);
        return; /* a broadcast line: compared as it is */
    }
    int checked = record_check(&r, why, sizeof why) == 0;
    const char *run_id = record_string(&r, RECORD_COMMON_run_id);
    double age_s = (double)time(NULL) - record_real(&r, RECORD_COMMON_time);
    if (!checked || !run_id || strcmp(run_id, TEST_RUN_ID) != 0 ||
        !(age_s > -5 && age_s < 60)) {
        failures++;
        printf("FAIL %s:%d: reply %s: %s\n", __FILE__, line_number, line,
               checked ? "run_id or time wrong" : why);
    }
    json_object_del(r.json, "schema");
    json_object_del(r.json, "time");
    json_object_del(r.json, "run_id");
    char *text = json_dumps(r.json, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (text)
        snprintf(line, size, "%s", text);
    free(text);
    record_free(&r);
}

static void expect_line(test_client *c, control_server *s, const char *want,
                        int line_number)
{
    char line[8192] = "";
    int rc = client_read_line(c, s, line, sizeof line, WAIT_MS);
    if (rc == 1)
        strip_reply_stamp(line, sizeof line, line_number);
    if (rc != 1 || strcmp(line, want) != 0) {
        failures++;
        printf("FAIL %s:%d: read %s\n  got  %s\n  want %s\n", __FILE__,
               line_number, rc == 1 ? "a line" : rc == 0 ? "end of stream"
                                                         : "nothing",
               line, want);
    }
}
#define EXPECT_LINE(c, s, want) expect_line(c, s, want, __LINE__)

/* Polls until want requests came or timeout_ms passed; returns the count. */
static int poll_requests(control_server *s, control_request *out, int want,
                         int max_per_poll, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    int got = 0;
    while (got < want && now_ms() <= deadline) {
        int room = want - got < max_per_poll ? want - got : max_per_poll;
        int n = control_poll(s, &limits, out + got, room);
        if (n > room) {
            failures++;
            printf("FAIL: control_poll returned %d with max %d\n", n, room);
            return got;
        }
        got += n;
        if (n == 0)
            sleep_ms(1);
    }
    return got;
}

static int wait_client_count(control_server *s, int want)
{
    long long deadline = now_ms() + WAIT_MS;
    while (control_client_count(s) != want && now_ms() <= deadline) {
        control_poll(s, &limits, NULL, 0);
        sleep_ms(1);
    }
    return control_client_count(s);
}

static void test_private_directory(void)
{
    control_server *s = open_server();
    char path[256], dir[256];
    snprintf(path, sizeof path, "%s", control_path(s));
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = '\0';
    char prefix[256];
    snprintf(prefix, sizeof prefix, "%s/moectl-", base_dir);
    EXPECT(strncmp(path, prefix, strlen(prefix)) == 0 &&
               strcmp(strrchr(path, '/'), "/control.sock") == 0,
           "socket %s is not %sXXXXXX/control.sock", path, prefix);

    struct stat st;
    EXPECT(stat(dir, &st) == 0 && S_ISDIR(st.st_mode) &&
               (st.st_mode & 07777) == 0700,
           "directory %s mode %04o, want 0700", dir,
           (unsigned)(st.st_mode & 07777));
    EXPECT(stat(path, &st) == 0 && S_ISSOCK(st.st_mode) &&
               (st.st_mode & 07777) == 0600,
           "socket %s mode %04o, want 0600", path,
           (unsigned)(st.st_mode & 07777));
    EXPECT(control_client_count(s) == 0, "clients before any connected");

    control_close(s);
    EXPECT(stat(path, &st) < 0 && errno == ENOENT, "socket %s left behind",
           path);
    EXPECT(stat(dir, &st) < 0 && errno == ENOENT, "directory %s left behind",
           dir);
    control_close(NULL);
}

static void test_given_path(void)
{
    char dir[256], path[300], shared[256], shared_path[300];
    snprintf(dir, sizeof dir, "%s/private", base_dir);
    snprintf(path, sizeof path, "%s/job.sock", dir);
    snprintf(shared, sizeof shared, "%s/shared", base_dir);
    snprintf(shared_path, sizeof shared_path, "%s/job.sock", shared);
    if (mkdir(dir, 0700) < 0 || chmod(dir, 0700) < 0 || mkdir(shared, 0700) < 0 ||
        chmod(shared, 0770) < 0) {
        printf("FAIL: cannot make test directories: %s\n", strerror(errno));
        failures++;
        return;
    }

    control_server *s = NULL, *second = NULL;
    moe_error err = {""};
    struct stat st;
    EXPECT(control_open(&s, path, &err) == 0, "open %s: %s", path, err.message);
    EXPECT(s && strcmp(control_path(s), path) == 0, "control_path");
    EXPECT(stat(path, &st) == 0 && S_ISSOCK(st.st_mode) &&
               (st.st_mode & 07777) == 0600,
           "socket %s mode %04o, want 0600", path,
           (unsigned)(st.st_mode & 07777));

    /* A live socket is not taken over. */
    EXPECT(control_open(&second, path, &err) < 0 && !second &&
               strstr(err.message, "in use by a running job"),
           "second server on a live socket: %s", err.message);
    control_close(s);
    EXPECT(stat(path, &st) < 0 && errno == ENOENT, "socket left behind");
    EXPECT(stat(dir, &st) == 0, "control_close removed a directory it did "
                                "not make");

    /* A stale socket (its server died without removing it) is replaced. */
    int stale = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int fits = snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path) <
               (int)sizeof addr.sun_path;
    EXPECT(fits && stale >= 0 && bind(stale, (struct sockaddr *)&addr, sizeof addr) == 0,
           "cannot make a stale socket");
    close(stale);
    s = NULL;
    EXPECT(control_open(&s, path, &err) == 0, "stale socket: %s", err.message);
    control_close(s);

    /* Another kind of file is left alone. */
    FILE *f = fopen(path, "w");
    if (f)
        fclose(f);
    s = NULL;
    EXPECT(control_open(&s, path, &err) < 0 && !s &&
               strstr(err.message, "not a socket"),
           "regular file in the way: %s", err.message);
    EXPECT(stat(path, &st) == 0 && S_ISREG(st.st_mode), "the file was removed");
    unlink(path);

    EXPECT(control_open(&s, shared_path, &err) < 0 && !s &&
               strstr(err.message, "writable by group or others"),
           "group-writable directory: %s", err.message);
    snprintf(path, sizeof path, "%s/missing/job.sock", base_dir);
    EXPECT(control_open(&s, path, &err) < 0 && !s &&
               strstr(err.message, "No such file or directory"),
           "missing directory: %s", err.message);
    rmdir(dir);
    rmdir(shared);
}

static void test_command_and_reply(void)
{
    control_server *s = open_server();
    test_client a;
    client_connect(&a, control_path(s));
    control_request req[4];

    client_say(&a, "lr 0.0001\n");
    EXPECT(poll_requests(s, req, 1, 8, WAIT_MS) == 1, "no request for lr");
    EXPECT(req[0].cmd.kind == COMMAND_LR && req[0].cmd.value == 1e-4,
           "lr request: kind %d value %g", (int)req[0].cmd.kind,
           req[0].cmd.value);
    EXPECT(control_client_count(s) == 1, "client count %d",
           control_client_count(s));
    control_reply(s, &req[0], 1, "lr set to 0.0001 from step 12");
    EXPECT_LINE(&a, NULL, "{\"type\":\"reply\",\"ok\":true,\"command\":"
                          "\"lr 0.0001\",\"message\":\"lr set to 0.0001 from "
                          "step 12\"}");

    client_say(&a, "move 1.2 0\npause\n");
    EXPECT(poll_requests(s, req, 2, 8, WAIT_MS) == 2, "no move and pause");
    EXPECT(req[0].cmd.kind == COMMAND_MOVE && req[0].cmd.layer == 1 &&
               req[0].cmd.expert == 2 && req[0].cmd.rank == 0 &&
               req[1].cmd.kind == COMMAND_PAUSE,
           "move/pause requests");
    control_reply(s, &req[0], 0, "rank 0 already hosts expert 1.2");
    control_reply(s, &req[1], 1, NULL);
    EXPECT_LINE(&a, NULL, "{\"type\":\"reply\",\"ok\":false,\"command\":"
                          "\"move 1.2 0\",\"error\":\"rank 0 already hosts "
                          "expert 1.2\"}");
    EXPECT_LINE(&a, NULL, "{\"type\":\"reply\",\"ok\":true,\"command\":"
                          "\"pause\"}");

    /* The facts of a reply are fields: the job's state after the command. */
    client_say(&a, "policy auto every 20\n");
    EXPECT(poll_requests(s, req, 1, 8, WAIT_MS) == 1, "no policy request");
    record_state state = {.step = 7, .last_step = 50, .paused = 1,
                          .lr = 1e-3, .ranks = 2, .placement_version = 3,
                          .policy = CONFIG_POLICY_AUTO, .every = 20,
                          .min_gain = 0.05};
    control_reply_state(s, &req[0], 1, "policy auto every 20", &state);
    char reply[1024] = "";
    EXPECT(client_read_line(&a, NULL, reply, sizeof reply, WAIT_MS) == 1,
           "no policy reply");
    record_value r;
    record_state got;
    char why[256] = "";
    EXPECT(record_decode(reply, &r, why, sizeof why) == 0 &&
               record_check(&r, why, sizeof why) == 0 &&
               record_state_read(&r, RECORD_REPLY_state, &got) == 0,
           "policy reply %s: %s", reply, why);
    EXPECT(got.step == 7 && got.last_step == 50 && got.paused &&
               got.lr == 1e-3 && got.ranks == 2 &&
               got.placement_version == 3 &&
               got.policy == CONFIG_POLICY_AUTO && got.every == 20 &&
               got.min_gain == 0.05,
           "state of the policy reply: %s", reply);
    record_free(&r);

    /* Messages are escaped by jansson, and bytes that are not UTF-8 sent as
     * '?', so the reply always stays one parseable line. */
    client_say(&a, "status\n");
    EXPECT(poll_requests(s, req, 1, 8, WAIT_MS) == 1, "no status");
    control_reply(s, &req[0], 1, "step 3 \"paused\"\nlr\t0.1 \xff");
    char line[1024] = "";
    EXPECT(client_read_line(&a, NULL, line, sizeof line, WAIT_MS) == 1,
           "no status reply");
    json_t *record = json_loads(line, 0, NULL);
    const char *message =
        json_string_value(json_object_get(record, "message"));
    EXPECT(message && strcmp(message, "step 3 \"paused\"\nlr\t0.1 ?") == 0,
           "status reply %s", line);
    json_decref(record);

    client_close(&a);
    control_close(s);
}

static void test_malformed(void)
{
    control_server *s = open_server();
    test_client a;
    client_connect(&a, control_path(s));
    control_request req[4];

    client_say(&a, "paws\n");
    EXPECT_LINE(&a, s, "{\"type\":\"reply\",\"ok\":false,\"error\":\"unknown "
                       "command \\\"paws\\\" (commands: pause, resume, stop, "
                       "checkpoint, status, lr VALUE, move L.E R, plan, "
                       "apply, policy off|suggest|auto [every N] [min-gain "
                       "X], split L.E R[:W] ..., shares W0 W1 ...)\"}");
    EXPECT(poll_requests(s, req, 1, 8, 100) == 0,
           "a malformed line came back from control_poll");

    client_say(&a, "lr fast\n\nmove 9.0 0\r\nstatus\n");
    EXPECT_LINE(&a, s, "{\"type\":\"reply\",\"ok\":false,\"error\":\"lr: "
                       "expected a number, got \\\"fast\\\"\"}");
    EXPECT_LINE(&a, s, "{\"type\":\"reply\",\"ok\":false,\"error\":\"empty "
                       "command\"}");
    EXPECT_LINE(&a, s, "{\"type\":\"reply\",\"ok\":false,\"error\":\"move: "
                       "layer 9 is out of range (0..3)\"}");
    EXPECT(poll_requests(s, req, 2, 8, 200) == 1 &&
               req[0].cmd.kind == COMMAND_STATUS,
           "the good line after the bad ones");

    client_send(&a, "pause\0now\n", 10);
    EXPECT_LINE(&a, s, "{\"type\":\"reply\",\"ok\":false,\"error\":\"line "
                       "contains a NUL byte\"}");

    /* Exactly CONTROL_LINE_MAX bytes is a line; one more is not, and the
     * rest of it is skipped up to its newline. */
    static char longest[CONTROL_LINE_MAX + 64];
    memset(longest, ' ', sizeof longest);
    memcpy(longest, "pause", 5);
    longest[CONTROL_LINE_MAX] = '\n';
    client_send(&a, longest, CONTROL_LINE_MAX + 1);
    EXPECT(poll_requests(s, req, 1, 8, WAIT_MS) == 1 &&
               req[0].cmd.kind == COMMAND_PAUSE,
           "a line of exactly %d bytes", CONTROL_LINE_MAX);

    static char too_long[3 * CONTROL_LINE_MAX];
    memset(too_long, 'x', sizeof too_long);
    memcpy(too_long, "pause", 5);
    client_send(&a, too_long, CONTROL_LINE_MAX + 1);
    EXPECT_LINE(&a, s, "{\"type\":\"reply\",\"ok\":false,\"error\":\"line too "
                       "long (limit 4096 bytes)\"}");
    client_send(&a, too_long, sizeof too_long);
    client_say(&a, "stop\nresume\n");
    EXPECT(poll_requests(s, req, 1, 8, WAIT_MS) == 1 &&
               req[0].cmd.kind == COMMAND_RESUME,
           "the line after an over-long one (kind %d)", (int)req[0].cmd.kind);
    EXPECT(poll_requests(s, req, 1, 8, 100) == 0,
           "the tail of an over-long line was parsed");
    char line[512];
    EXPECT(client_read_line(&a, s, line, sizeof line, 100) == -1,
           "a second reply for one over-long line: %s", line);

    client_close(&a);
    control_close(s);
}

static void test_broadcast(void)
{
    control_server *s = open_server();
    test_client a, b;
    client_connect(&a, control_path(s));
    client_connect(&b, control_path(s));
    EXPECT(wait_client_count(s, 2) == 2, "two clients");

    control_broadcast(s, "{\"type\":\"step\",\"step\":1}");
    control_broadcast(s, "{\"type\":\"event\",\n\"text\":\"x\"}");
    EXPECT_LINE(&a, s, "{\"type\":\"step\",\"step\":1}");
    EXPECT_LINE(&b, s, "{\"type\":\"step\",\"step\":1}");
    EXPECT_LINE(&a, s, "{\"type\":\"event\", \"text\":\"x\"}");
    EXPECT_LINE(&b, s, "{\"type\":\"event\", \"text\":\"x\"}");

    client_close(&a);
    EXPECT(wait_client_count(s, 1) == 1, "a closed client stays counted");
    control_broadcast(s, "{\"type\":\"step\",\"step\":2}");
    EXPECT_LINE(&b, s, "{\"type\":\"step\",\"step\":2}");
    client_close(&b);
    control_close(s);
}

static void test_vanishing_clients(void)
{
    control_server *s = open_server();
    test_client half, other, quick, quiet;
    control_request req[4];
    client_connect(&half, control_path(s));
    client_connect(&other, control_path(s));
    EXPECT(wait_client_count(s, 2) == 2, "two clients");

    /* Half a line, then gone: nothing runs, the slot is freed. */
    client_say(&half, "sto");
    control_poll(s, &limits, NULL, 0);
    client_close(&half);
    EXPECT(wait_client_count(s, 1) == 1, "the client that left is counted");
    client_say(&other, "pause\n");
    int n = poll_requests(s, req, 2, 8, 200);
    EXPECT(n == 1 && req[0].cmd.kind == COMMAND_PAUSE,
           "%d requests after a half line (want only pause)", n);
    control_reply(s, &req[0], 1, NULL);
    EXPECT_LINE(&other, s, "{\"type\":\"reply\",\"ok\":true,\"command\":"
                           "\"pause\"}");

    /* A whole line, then gone: the command was sent, so it runs; the reply
     * goes nowhere. */
    client_connect(&quick, control_path(s));
    client_say(&quick, "checkpoint\n");
    client_close(&quick);
    EXPECT(poll_requests(s, req, 1, 8, WAIT_MS) == 1 &&
               req[0].cmd.kind == COMMAND_CHECKPOINT,
           "a command from a client that left");
    EXPECT(wait_client_count(s, 1) == 1, "the quick client is counted");
    control_reply(s, &req[0], 1, "saved");

    /* A reply for a connection that is gone never reaches the next client
     * in the same slot. */
    client_connect(&quiet, control_path(s));
    client_say(&quiet, "status\n");
    control_request mine;
    EXPECT(poll_requests(s, &mine, 1, 8, WAIT_MS) == 1, "status");
    EXPECT(mine.client == req[0].client && mine.generation != req[0].generation,
           "slot %d gen %u after slot %d gen %u", mine.client, mine.generation,
           req[0].client, req[0].generation);
    control_reply(s, &req[0], 1, "saved");
    control_broadcast(s, "{\"type\":\"step\",\"step\":3}");
    EXPECT_LINE(&quiet, s, "{\"type\":\"step\",\"step\":3}");

    /* Shut down for writing only: it still hears replies and broadcasts. */
    shutdown(quiet.fd, SHUT_WR);
    for (int i = 0; i < 20; i++) {
        control_poll(s, &limits, NULL, 0);
        sleep_ms(1);
    }
    EXPECT(control_client_count(s) == 2, "a half-closed client was dropped");
    control_reply(s, &mine, 1, "running");
    EXPECT_LINE(&quiet, s, "{\"type\":\"reply\",\"ok\":true,\"command\":"
                           "\"status\",\"message\":\"running\"}");
    client_close(&quiet);
    EXPECT(wait_client_count(s, 1) == 1, "the half-closed client closed");

    client_say(&other, "resume\n");
    EXPECT(poll_requests(s, req, 1, 8, WAIT_MS) == 1 &&
               req[0].cmd.kind == COMMAND_RESUME,
           "the remaining client still works");
    client_close(&other);
    control_close(s);
}

static void test_queue(void)
{
    control_server *s = open_server();
    test_client a;
    client_connect(&a, control_path(s));

    /* More than CONTROL_QUEUE_MAX at once: none is lost, order is kept,
     * and control_poll returns at most max each time. */
    enum { COUNT = 3 * CONTROL_QUEUE_MAX };
    static char lines[COUNT * 16];
    size_t len = 0;
    for (int i = 0; i < COUNT; i++)
        len += (size_t)snprintf(lines + len, sizeof lines - len, "move %d.%d %d\n",
                                i % 4, i % 8, i % 3);
    client_send(&a, lines, len);
    for (int i = 0; i < 20; i++)
        control_poll(s, &limits, NULL, 0);
    static control_request req[COUNT];
    int n = poll_requests(s, req, COUNT, 5, WAIT_MS);
    EXPECT(n == COUNT, "%d of %d requests", n, COUNT);
    for (int i = 0; i < n; i++)
        EXPECT(req[i].cmd.layer == i % 4 && req[i].cmd.expert == i % 8 &&
                   req[i].cmd.rank == i % 3,
               "request %d out of order", i);
    client_close(&a);
    control_close(s);
}

static void test_too_many_clients(void)
{
    control_server *s = open_server();
    static test_client clients[CONTROL_MAX_CLIENTS + 1];
    for (int i = 0; i < CONTROL_MAX_CLIENTS; i++) {
        client_connect(&clients[i], control_path(s));
        control_poll(s, &limits, NULL, 0);
    }
    EXPECT(wait_client_count(s, CONTROL_MAX_CLIENTS) == CONTROL_MAX_CLIENTS,
           "%d clients", CONTROL_MAX_CLIENTS);
    test_client *extra = &clients[CONTROL_MAX_CLIENTS];
    client_connect(extra, control_path(s));
    EXPECT_LINE(extra, s, "{\"type\":\"reply\",\"ok\":false,\"error\":\"too "
                          "many clients (limit 32)\"}");
    char line[256];
    EXPECT(client_read_line(extra, s, line, sizeof line, WAIT_MS) == 0,
           "the refused client was not closed");
    EXPECT(control_client_count(s) == CONTROL_MAX_CLIENTS, "count %d",
           control_client_count(s));
    for (int i = 0; i <= CONTROL_MAX_CLIENTS; i++)
        client_close(&clients[i]);
    EXPECT(wait_client_count(s, 0) == 0, "clients left");
    control_close(s);
}

/* Reads whatever is there without waiting; returns newlines seen. */
static long drain(int fd, long long *bytes)
{
    static char buf[1 << 16];
    long lines = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0)
            return lines;
        *bytes += n;
        for (ssize_t i = 0; i < n; i++)
            lines += buf[i] == '\n';
    }
}

static void test_slow_client(void)
{
    control_server *s = open_server();
    test_client slow, fast;
    client_connect(&slow, control_path(s));
    client_connect(&fast, control_path(s));
    EXPECT(wait_client_count(s, 2) == 2, "two clients");

    /* 5 MiB in 4 KiB records, far past what the slow client's socket and
     * its CONTROL_OUTPUT_MAX queue hold. */
    enum { LINE_BYTES = 4096, LINES = 5 * 256 };
    static char record[LINE_BYTES];
    int head = snprintf(record, sizeof record, "{\"type\":\"step\",\"pad\":\"");
    memset(record + head, 'p', LINE_BYTES - 1 - (size_t)head - 2);
    memcpy(record + LINE_BYTES - 3, "\"}", 3);   /* 4095 bytes + newline */

    long fast_lines = 0;
    long long fast_bytes = 0;
    int dropped_at = -1;
    for (int i = 0; i < LINES; i++) {
        control_broadcast(s, record);
        if (dropped_at < 0 && control_client_count(s) == 1)
            dropped_at = i;
        fast_lines += drain(fast.fd, &fast_bytes);
    }
    long long deadline = now_ms() + WAIT_MS;
    while (fast_lines < LINES && now_ms() <= deadline) {
        control_poll(s, &limits, NULL, 0);
        fast_lines += drain(fast.fd, &fast_bytes);
    }
    EXPECT(dropped_at > 0, "the slow client was not dropped");
    EXPECT(control_client_count(s) == 1, "count %d", control_client_count(s));
    EXPECT(fast_lines == LINES && fast_bytes == (long long)LINES * LINE_BYTES,
           "the fast client got %ld records, %lld bytes", fast_lines,
           fast_bytes);

    /* The dropped client sees the end of its stream after what its socket
     * held (possibly ending inside a record). */
    long long slow_bytes = 0;
    struct pollfd pfd = {.fd = slow.fd, .events = POLLIN};
    char buf[1 << 16];
    ssize_t n;
    while (poll(&pfd, 1, WAIT_MS) > 0 && (n = recv(slow.fd, buf, sizeof buf, 0)) > 0)
        slow_bytes += n;
    EXPECT(slow_bytes > 0 && slow_bytes < (long long)LINES * LINE_BYTES,
           "the slow client read %lld bytes before the end", slow_bytes);
    client_close(&slow);
    client_close(&fast);
    control_close(s);
}

/* `moectl ctl` in a thread against the server in this one. */
typedef struct ctl_job {
    const char *path;
    const char *line;     /* ctl_request, or NULL for ctl_run */
    int argc;
    char **argv;
    int timeout_ms;
    FILE *out, *err;
    int status;
    atomic_int done;
} ctl_job;

static void *ctl_thread(void *arg)
{
    ctl_job *job = arg;
    if (job->line)
        job->status = ctl_request(job->path, job->line, job->timeout_ms,
                                  job->out, job->err);
    else
        job->status = ctl_run(job->path, job->argc, job->argv);
    atomic_store(&job->done, 1);
    return NULL;
}

static void read_file(FILE *f, char *buf, size_t size)
{
    fflush(f);
    rewind(f);
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = '\0';
}

/* Runs ctl with line while serving: each request is answered with
 * (reply_ok, reply_message) after a step record, unless reply_ok is -1. */
static void run_ctl(control_server *s, const char *path, const char *line,
                    int timeout_ms, int reply_ok, const char *reply_message,
                    int want_status, const char *want_out, const char *want_err,
                    command *seen)
{
    ctl_job job = {.path = path, .line = line, .timeout_ms = timeout_ms,
                   .out = tmpfile(), .err = tmpfile(), .status = -1};
    atomic_init(&job.done, 0);
    pthread_t thread;
    if (!job.out || !job.err || pthread_create(&thread, NULL, ctl_thread, &job)) {
        printf("FAIL: cannot start ctl\n");
        exit(1);
    }
    long long deadline = now_ms() + 3 * WAIT_MS;
    while (!atomic_load(&job.done) && now_ms() <= deadline) {
        control_request req;
        if (control_poll(s, &limits, &req, 1) == 1) {
            if (seen)
                *seen = req.cmd;
            control_broadcast(s, "{\"type\":\"step\",\"step\":7}");
            if (reply_ok >= 0)
                control_reply(s, &req, reply_ok, reply_message);
        }
        sleep_ms(1);
    }
    pthread_join(thread, NULL);
    char out[1024], err[1024];
    read_file(job.out, out, sizeof out);
    read_file(job.err, err, sizeof err);
    EXPECT(job.status == want_status && strcmp(out, want_out) == 0 &&
               strcmp(err, want_err) == 0,
           "ctl \"%s\": status %d (want %d)\n  out \"%s\" (want \"%s\")\n"
           "  err \"%s\" (want \"%s\")",
           line, job.status, want_status, out, want_out, err, want_err);
    fclose(job.out);
    fclose(job.err);
}

static void test_ctl(void)
{
    control_server *s = open_server();
    const char *path = control_path(s);
    char want[512];
    command seen = {.kind = COMMAND_STATUS};

    run_ctl(s, path, "lr 3e-4", WAIT_MS, 1, "lr 0.0003 from step 8", 0,
            "lr 0.0003 from step 8\n", "", &seen);
    EXPECT(seen.kind == COMMAND_LR && seen.value == 3e-4, "ctl sent lr %g",
           seen.value);
    run_ctl(s, path, "pause", WAIT_MS, 1, NULL, 0, "ok\n", "", NULL);
    run_ctl(s, path, "checkpoint", WAIT_MS, 0, "disk full", 1, "",
            "moectl ctl: disk full\n", NULL);
    run_ctl(s, path, "move 9.0 0", WAIT_MS, 1, "moved", 1, "",
            "moectl ctl: move: layer 9 is out of range (0..3)\n", NULL);
    snprintf(want, sizeof want, "moectl ctl: no reply from %s within 0.3 s\n",
             path);
    run_ctl(s, path, "status", 300, -1, NULL, 1, "", want, NULL);

    char missing[300];
    snprintf(missing, sizeof missing, "%s/missing.sock", base_dir);
    snprintf(want, sizeof want,
             "moectl ctl: cannot connect to %s: No such file or directory\n",
             missing);
    run_ctl(s, missing, "pause", WAIT_MS, 1, NULL, 1, "", want, NULL);

    /* ctl_run joins the words (its output goes to this test's stdout). */
    char *words[] = {"move", "2.5", "1"};
    ctl_job job = {.path = path, .argc = 3, .argv = words, .status = -1};
    atomic_init(&job.done, 0);
    pthread_t thread;
    if (pthread_create(&thread, NULL, ctl_thread, &job)) {
        printf("FAIL: cannot start ctl\n");
        exit(1);
    }
    control_request req = {.cmd = {.kind = COMMAND_STATUS}};
    long long deadline = now_ms() + 3 * WAIT_MS;
    while (!atomic_load(&job.done) && now_ms() <= deadline) {
        if (control_poll(s, &limits, &req, 1) == 1)
            control_reply(s, &req, 1, "(ctl_run reply) expert 2.5 moves to rank 1");
        sleep_ms(1);
    }
    pthread_join(thread, NULL);
    EXPECT(job.status == 0 && req.cmd.kind == COMMAND_MOVE &&
               req.cmd.layer == 2 && req.cmd.expert == 5 && req.cmd.rank == 1,
           "ctl_run move: status %d", job.status);

    char *none[] = {NULL};
    char *broken[] = {"pause\nstop"};
    EXPECT(ctl_run(path, 0, none) == 2, "ctl_run without a command");
    EXPECT(ctl_run("", 1, words) == 2, "ctl_run without a socket");
    EXPECT(ctl_run(path, 1, broken) == 2, "ctl_run with a line break");
    control_close(s);
}

int main(void)
{
    if (!mkdtemp(base_dir)) {
        printf("FAIL: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    setenv("XDG_RUNTIME_DIR", base_dir, 1);

    test_private_directory();
    test_given_path();
    test_command_and_reply();
    test_malformed();
    test_broadcast();
    test_vanishing_clients();
    test_queue();
    test_too_many_clients();
    test_slow_client();
    test_ctl();

    /* Every server removed what it made, so this succeeds. */
    EXPECT(rmdir(base_dir) == 0, "%s not empty: %s", base_dir, strerror(errno));
    if (failures) {
        printf("%d failure(s)\n", failures);
        return 1;
    }
    printf("control: all passed\n");
    return 0;
}
