/* The one client of a job's control socket (engine/protocol/control.c):
 * connects to its Unix socket, sends command lines and reads the records
 * it publishes, one JSON text a line. The console, the demo and
 * `moectl ctl` all talk to a job through it. */
#ifndef MOECTL_TUI_JOB_CLIENT_H
#define MOECTL_TUI_JOB_CLIENT_H

#include <stddef.h>

enum {
    /* Step records carry the whole expert-load matrix; a line longer than
     * this is not a record from moectl and is dropped. */
    JOB_CLIENT_LINE_MAX = 16 << 20,
};

typedef struct job_client {
    int fd;              /* -1: not connected */
    char *buf;           /* bytes read, not yet a whole line */
    size_t len, cap;
    int dropping;        /* inside a line too long to keep */
    int dropped_lines;   /* lines dropped for being too long, ever */
} job_client;

/* Outcomes of job_client_read. */
typedef enum job_client_status {
    JOB_CLIENT_OPEN,      /* read what there was; the socket stays open */
    JOB_CLIENT_STOPPED,   /* the line handler asked to stop */
    JOB_CLIENT_CLOSED,    /* the job closed the socket */
    JOB_CLIENT_FAILED,    /* a read failed: errno says why */
} job_client_status;

/* Called with each complete line (no newline, NUL-terminated); returns
 * nonzero to stop reading. */
typedef int (*job_client_line_fn)(void *ctx, const char *line);

/* A client that is not connected (fd -1). */
void job_client_init(job_client *c);

/* One attempt to connect to socket_path. Returns 0, or -1 with errno set
 * (ENAMETOOLONG when the path does not fit a Unix socket address). */
/* How long a connect waits for a job that does not accept. */
enum { JOB_CONNECT_TIMEOUT_MS = 10000 };

int job_client_connect(job_client *c, const char *socket_path);

/* Sends line followed by a newline, all of it. Returns 0, or -1 with errno
 * set (EPIPE once the job is gone, no SIGPIPE raised; ETIMEDOUT when the
 * job took none of it for 5 s). */
int job_client_send(job_client *c, const char *line);

/* Waits up to wait_ms (0: not at all) for data, then reads all there is
 * and hands each complete line to on_line, until it asks to stop. */
job_client_status job_client_read(job_client *c, int wait_ms,
                                  job_client_line_fn on_line, void *ctx);

/* Closes the socket (if open) and frees the buffer: the client is as
 * job_client_init left it, and can connect again. */
void job_client_close(job_client *c);

#endif
