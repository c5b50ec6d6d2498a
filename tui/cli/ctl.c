#include "tui/cli/ctl.h"
#include "engine/core/clock.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "tui/job/client.h"

#include "engine/protocol/record.h"

enum {
    CTL_OK = 0,
    CTL_FAILED = 1,
    CTL_USAGE = 2,
};

static int ctl_connect(job_client *client, const char *socket_path,
                       FILE *err)
{
    if (job_client_connect(client, socket_path) == 0)
        return 0;
    if (errno == ENAMETOOLONG)
        fprintf(err, "moectl ctl: cannot connect to %s: path too long for a "
                     "Unix socket (limit %zu bytes)\n",
                socket_path, sizeof ((struct sockaddr_un *)0)->sun_path - 1);
    else if (errno == ETIMEDOUT)
        fprintf(err, "moectl ctl: %s did not accept the connection within "
                     "%d s: the job's rank 0 is stopped or not serving its "
                     "socket\n", socket_path, JOB_CONNECT_TIMEOUT_MS / 1000);
    else
        fprintf(err, "moectl ctl: cannot connect to %s: %s\n", socket_path,
                strerror(errno));
    return -1;
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

typedef struct ctl_reading {
    const char *socket_path;
    FILE *out, *err;
    int status;   /* -1 until the reply */
} ctl_reading;

static int ctl_line(void *ctx, const char *line)
{
    ctl_reading *r = ctx;
    r->status = ctl_record(r->socket_path, line, r->out, r->err);
    return r->status >= 0;
}

/* Reads records until the reply; status as ctl_request. */
static int ctl_await_reply(job_client *client, const char *socket_path,
                           int timeout_ms, FILE *out, FILE *err)
{
    ctl_reading reading = {socket_path, out, err, -1};
    long long deadline = clock_monotonic_ms() + timeout_ms;
    for (;;) {
        long long left_ms = deadline - clock_monotonic_ms();
        job_client_status read =
            job_client_read(client, left_ms > 0 ? (int)left_ms : 0, ctl_line,
                            &reading);
        if (reading.status >= 0)
            return reading.status;
        if (client->dropped_lines > 0) {
            fprintf(err, "moectl ctl: %s sent a record longer than %d "
                         "bytes\n", socket_path, JOB_CLIENT_LINE_MAX);
            return CTL_FAILED;
        }
        if (read == JOB_CLIENT_FAILED) {
            fprintf(err, "moectl ctl: reading from %s: %s\n", socket_path,
                    strerror(errno));
            return CTL_FAILED;
        }
        if (read == JOB_CLIENT_CLOSED) {
            fprintf(err, "moectl ctl: %s closed the connection before "
                         "replying\n", socket_path);
            return CTL_FAILED;
        }
        if (clock_monotonic_ms() >= deadline) {
            fprintf(err, "moectl ctl: no reply from %s within %g s\n",
                    socket_path, timeout_ms / 1000.0);
            return CTL_FAILED;
        }
    }
}

int ctl_request(const char *socket_path, const char *line, int timeout_ms,
                FILE *out, FILE *err)
{
    job_client client;
    job_client_init(&client);
    if (ctl_connect(&client, socket_path, err) < 0)
        return CTL_FAILED;
    int status;
    if (job_client_send(&client, line) < 0) {
        fprintf(err, "moectl ctl: sending to %s: %s\n", socket_path,
                strerror(errno));
        status = CTL_FAILED;
    } else {
        status = ctl_await_reply(&client, socket_path, timeout_ms, out, err);
    }
    job_client_close(&client);
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
