#include "engine/protocol/control.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "engine/protocol/record.h"

enum {
    LISTEN_BACKLOG = 16,
    /* Reads per client and poll, so one busy client cannot hold the loop. */
    READS_PER_POLL = 16,
};

typedef struct control_client {
    int fd;                 /* -1: free slot */
    unsigned generation;
    int read_closed;        /* the client sent EOF: nothing more to read */
    int peer_gone;          /* the client closed or reset the connection */
    int discarding;         /* skipping the rest of an over-long line */
    size_t in_len;
    char in[CONTROL_LINE_MAX + 1];   /* a whole line and its newline */
    char *out;              /* queued output: out[out_start, out_end) */
    size_t out_start, out_end, out_cap;
} control_client;

struct control_server {
    int listen_fd;
    struct sockaddr_un addr;
    int bound;              /* addr names our socket: dev/ino below */
    dev_t socket_dev;
    ino_t socket_ino;
    char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];  /* made by us, or "" */
    unsigned last_generation;
    control_client clients[CONTROL_MAX_CLIENTS];
    control_request queue[CONTROL_QUEUE_MAX];
    int queue_head, queue_len;
    /* The latest record of each kind a new client needs to draw the job
     * at once (the run, the last step, the last validation). */
    char *remembered[CONTROL_REMEMBERED_MAX];
    char run_id[RECORD_RUN_ID_MAX]; /* stamped on replies */
};

void control_set_run_id(control_server *s, const char *run_id)
{
    if (s)
        snprintf(s->run_id, sizeof s->run_id, "%s", run_id ? run_id : "");
}

void control_remember(control_server *s, int kind, const char *line)
{
    if (!s || kind < 0 || kind >= CONTROL_REMEMBERED_MAX)
        return;
    char *copy = strdup(line);
    if (!copy)
        return;
    free(s->remembered[kind]);
    s->remembered[kind] = copy;
}

static int control_set_flags(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -1;
    flags = fcntl(fd, F_GETFD);
    if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
        return -1;
    return 0;
}

/* The reply record, or NULL when out of memory. Free with free(). Client
 * text (an engine message, a quoted word) that is not UTF-8 is sent with
 * '?' for the bytes jansson refuses. */
static char *control_reply_record(const char *run_id, int ok,
                                  const command *cmd, const char *text,
                                  const record_state *state)
{
    json_t *record = record_begin(RECORD_TYPE_REPLY);
    if (!record)
        return NULL;
    record_set_bool(record, RECORD_REPLY_ok, ok);
    if (cmd) {
        char formatted[COMMAND_TEXT_MAX];
        command_format(cmd, formatted, sizeof formatted);
        record_set_string(record, RECORD_REPLY_command, formatted);
    }
    if (ok && text)
        record_set_string(record, RECORD_REPLY_message, text);
    else if (!ok)
        record_set_string(record, RECORD_REPLY_error,
                          text ? text : "command failed");
    if (state)
        record_set_json(record, RECORD_REPLY_state, record_state_json(state));
    record_stamp(record, run_id);
    char *line = json_dumps(record, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(record);
    return line;
}

static void control_client_close(control_client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c->out);
    c->fd = -1;
    c->out = NULL;
    c->out_start = c->out_end = c->out_cap = 0;
    c->in_len = 0;
    c->read_closed = c->peer_gone = c->discarding = 0;
}

/* Sends what the socket takes now; drops the client if it went away. */
static void control_client_flush(control_client *c)
{
    while (c->out_start < c->out_end) {
        ssize_t n = send(c->fd, c->out + c->out_start,
                         c->out_end - c->out_start,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            c->out_start += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        } else {
            control_client_close(c);
            return;
        }
    }
    c->out_start = c->out_end = 0;
}

/* Appends text and a newline to the client's output (newlines inside text
 * become spaces so the record stays one line) and sends what it can. A client
 * that has let CONTROL_OUTPUT_MAX bytes pile up is dropped: the engine never
 * waits for a reader. */
static void control_client_send(control_client *c, const char *text)
{
    size_t len = strlen(text);
    size_t pending = c->out_end - c->out_start;
    if (pending + len + 1 > CONTROL_OUTPUT_MAX) {
        control_client_close(c);
        return;
    }
    if (c->out_end + len + 1 > c->out_cap && c->out_start > 0) {
        memmove(c->out, c->out + c->out_start, pending);
        c->out_start = 0;
        c->out_end = pending;
    }
    if (c->out_end + len + 1 > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_end + len + 1)
            cap *= 2;
        if (cap > CONTROL_OUTPUT_MAX)
            cap = CONTROL_OUTPUT_MAX;
        char *grown = realloc(c->out, cap);
        if (!grown) {
            control_client_close(c);
            return;
        }
        c->out = grown;
        c->out_cap = cap;
    }
    char *dst = c->out + c->out_end;
    for (size_t i = 0; i < len; i++)
        dst[i] = text[i] == '\n' ? ' ' : text[i];
    dst[len] = '\n';
    c->out_end += len + 1;
    control_client_flush(c);
}

static void control_client_reply(const control_server *s, control_client *c,
                                 int ok, const command *cmd, const char *text,
                                 const record_state *state)
{
    char *record = control_reply_record(s->run_id, ok, cmd, text, state);
    if (record)
        control_client_send(c, record);
    free(record);
}

/* A socket file at path left by a job that is gone is removed; anything else
 * there is an error. */
static int control_clear_stale(const char *path, moe_error *err)
{
    struct stat st;
    if (lstat(path, &st) < 0) {
        if (errno == ENOENT)
            return 0;
        return error_set_errno(err, "control socket %s", path);
    }
    if (!S_ISSOCK(st.st_mode))
        return error_set(err, "control socket %s: a file that is not a socket "
                              "is in the way", path);
    /* Non-blocking, so a live job with a full backlog cannot stall us. */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || control_set_flags(fd) < 0) {
        int saved = errno;
        if (fd >= 0)
            close(fd);
        errno = saved;
        return error_set_errno(err, "control socket %s: socket", path);
    }
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
    int rc = connect(fd, (struct sockaddr *)&addr, sizeof addr);
    int connect_errno = errno;
    close(fd);
    if (rc == 0 || connect_errno == EAGAIN || connect_errno == EINPROGRESS)
        return error_set(err, "control socket %s is in use by a running job",
                         path);
    if (connect_errno != ECONNREFUSED) {
        errno = connect_errno;
        return error_set_errno(err, "control socket %s", path);
    }
    if (unlink(path) < 0 && errno != ENOENT)
        return error_set_errno(err, "cannot remove the stale control socket %s",
                               path);
    return 0;
}

/* Anyone who can write to the socket's directory can swap the socket for
 * their own and read the commands, so it must be private to us (or root). */
static int control_check_directory(const char *path, moe_error *err)
{
    char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    struct stat st;
    if (stat(dir, &st) < 0)
        return error_set_errno(err, "control socket directory %s", dir);
    if (!S_ISDIR(st.st_mode))
        return error_set(err, "control socket directory %s is not a directory",
                         dir);
    if (st.st_uid != geteuid() && st.st_uid != 0)
        return error_set(err, "control socket directory %s belongs to another "
                              "user (uid %ld)", dir, (long)st.st_uid);
    if (st.st_mode & (S_IWGRP | S_IWOTH))
        return error_set(err, "control socket directory %s is writable by group "
                              "or others (mode %04o); use a private directory "
                              "(mode 0700)", dir, (unsigned)(st.st_mode & 07777));
    return 0;
}

static int control_make_directory(control_server *s, moe_error *err)
{
    const char *base = getenv("XDG_RUNTIME_DIR");
    if (!base || base[0] != '/')
        base = "/tmp";
    int n = snprintf(s->dir, sizeof s->dir, "%s/moectl-XXXXXX", base);
    if (n < 0 || (size_t)n + sizeof "/control.sock" > sizeof s->dir) {
        s->dir[0] = '\0';
        return error_set(err, "control socket directory under %s: path too "
                              "long for a Unix socket (limit %zu bytes)",
                         base, sizeof s->dir - 1);
    }
    if (!mkdtemp(s->dir)) {
        int saved = errno;
        s->dir[0] = '\0';
        errno = saved;
        return error_set_errno(err, "cannot make a control socket directory "
                                    "under %s", base);
    }
    /* Fits: the length was checked above. */
    n = snprintf(s->addr.sun_path, sizeof s->addr.sun_path, "%s/control.sock",
                 s->dir);
    return n > 0 ? 0 : -1;
}

int control_open(control_server **out, const char *path, moe_error *err)
{
    *out = NULL;
    control_server *s = calloc(1, sizeof *s);
    if (!s)
        return error_set(err, "control socket: out of memory");
    s->listen_fd = -1;
    for (int i = 0; i < CONTROL_MAX_CLIENTS; i++)
        s->clients[i].fd = -1;
    s->addr.sun_family = AF_UNIX;

    if (!path) {
        if (control_make_directory(s, err) < 0)
            goto fail;
    } else {
        if (strlen(path) >= sizeof s->addr.sun_path) {
            error_set(err, "control socket %s: path too long for a Unix "
                           "socket (limit %zu bytes)",
                      path, sizeof s->addr.sun_path - 1);
            goto fail;
        }
        if (control_check_directory(path, err) < 0 ||
            control_clear_stale(path, err) < 0)
            goto fail;
        snprintf(s->addr.sun_path, sizeof s->addr.sun_path, "%s", path);
    }
    const char *socket_path = s->addr.sun_path;

    s->listen_fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s->listen_fd < 0 || control_set_flags(s->listen_fd) < 0) {
        error_set_errno(err, "control socket %s: socket", socket_path);
        goto fail;
    }
    /* Linux creates the socket file with the mode of the socket itself, so
     * it is never reachable by others, not even between bind and chmod. */
    (void)fchmod(s->listen_fd, 0600);
    if (bind(s->listen_fd, (struct sockaddr *)&s->addr, sizeof s->addr) < 0) {
        error_set_errno(err, "control socket %s: bind", socket_path);
        goto fail;
    }
    struct stat st;
    if (lstat(socket_path, &st) < 0) {
        error_set_errno(err, "control socket %s", socket_path);
        goto fail;
    }
    s->bound = 1;
    s->socket_dev = st.st_dev;
    s->socket_ino = st.st_ino;
    if (chmod(socket_path, 0600) < 0) {
        error_set_errno(err, "control socket %s: chmod", socket_path);
        goto fail;
    }
    if (listen(s->listen_fd, LISTEN_BACKLOG) < 0) {
        error_set_errno(err, "control socket %s: listen", socket_path);
        goto fail;
    }
    *out = s;
    return 0;

fail:
    control_close(s);
    return -1;
}

const char *control_path(const control_server *s)
{
    return s->addr.sun_path;
}

void control_close(control_server *s)
{
    if (s)
        for (int k = 0; k < CONTROL_REMEMBERED_MAX; k++)
            free(s->remembered[k]);
    if (!s)
        return;
    for (int i = 0; i < CONTROL_MAX_CLIENTS; i++)
        control_client_close(&s->clients[i]);
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    /* Remove the socket only if nobody has put another file in its place. */
    struct stat st;
    if (s->bound && lstat(s->addr.sun_path, &st) == 0 &&
        st.st_dev == s->socket_dev && st.st_ino == s->socket_ino)
        unlink(s->addr.sun_path);
    if (s->dir[0])
        rmdir(s->dir);
    free(s);
}

int control_client_count(const control_server *s)
{
    int n = 0;
    for (int i = 0; s && i < CONTROL_MAX_CLIENTS; i++)
        n += s->clients[i].fd >= 0;
    return n;
}

static void control_client_read(control_server *s, int slot,
                                const command_limits *limits);

static void control_accept(control_server *s, const command_limits *limits)
{
    for (;;) {
        int fd = accept(s->listen_fd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return;   /* EAGAIN, or out of descriptors: try at the next poll */
        }
        if (control_set_flags(fd) < 0) {
            close(fd);
            continue;
        }
        int slot = 0;
        while (slot < CONTROL_MAX_CLIENTS && s->clients[slot].fd >= 0)
            slot++;
        if (slot == CONTROL_MAX_CLIENTS) {
            char message[64];
            snprintf(message, sizeof message, "too many clients (limit %d)",
                     CONTROL_MAX_CLIENTS);
            char *record = control_reply_record(s->run_id, 0, NULL, message,
                                                NULL);
            char line[256];
            int len = record ? snprintf(line, sizeof line, "%s\n", record) : -1;
            /* Best effort: a fresh socket takes one short line. */
            if (len > 0 && (size_t)len < sizeof line)
                (void)send(fd, line, (size_t)len, MSG_NOSIGNAL | MSG_DONTWAIT);
            free(record);
            close(fd);
            continue;
        }
        control_client *c = &s->clients[slot];
        control_client_close(c);
        c->fd = fd;
        if (++s->last_generation == 0)
            s->last_generation = 1;
        c->generation = s->last_generation;
        /* A command sent right after connecting is read in this poll, and
         * before the remembered records go out: a client that sends and
         * closes at once (fire and forget) would make those writes fail
         * and be dropped with its command unread. */
        control_client_read(s, slot, limits);
        for (int k = 0; k < CONTROL_REMEMBERED_MAX && c->fd >= 0; k++)
            if (s->remembered[k])
                control_client_send(c, s->remembered[k]);
    }
}

static void control_handle_line(control_server *s, int slot, char *line,
                                const command_limits *limits)
{
    control_client *c = &s->clients[slot];
    char reason[256];
    command cmd;
    if (command_parse(line, limits, &cmd, reason, sizeof reason) < 0) {
        control_client_reply(s, c, 0, NULL, reason, NULL);
        return;
    }
    int tail = (s->queue_head + s->queue_len) % CONTROL_QUEUE_MAX;
    s->queue[tail] = (control_request){cmd, slot, c->generation};
    s->queue_len++;
}

/* Parses the complete lines in the client's input while the queue has room;
 * keeps an unfinished line for later. */
static void control_client_lines(control_server *s, int slot,
                                 const command_limits *limits)
{
    control_client *c = &s->clients[slot];
    size_t start = 0;
    while (c->fd >= 0) {
        char *line = c->in + start;
        size_t avail = c->in_len - start;
        char *newline = memchr(line, '\n', avail);
        if (!newline) {
            if (c->discarding || c->read_closed) {
                start = c->in_len;
            } else if (avail > CONTROL_LINE_MAX) {
                char reason[64];
                snprintf(reason, sizeof reason,
                         "line too long (limit %d bytes)", CONTROL_LINE_MAX);
                control_client_reply(s, c, 0, NULL, reason, NULL);
                c->discarding = 1;
                start = c->in_len;
            }
            break;
        }
        size_t len = (size_t)(newline - line);
        if (c->discarding) {
            c->discarding = 0;
        } else if (memchr(line, '\0', len)) {
            control_client_reply(s, c, 0, NULL, "line contains a NUL byte",
                                 NULL);
        } else {
            if (s->queue_len == CONTROL_QUEUE_MAX)
                break;
            *newline = '\0';
            control_handle_line(s, slot, line, limits);
        }
        start += len + 1;
    }
    if (c->fd < 0)
        return;
    memmove(c->in, c->in + start, c->in_len - start);
    c->in_len -= start;
}

static void control_client_read(control_server *s, int slot,
                                const command_limits *limits)
{
    control_client *c = &s->clients[slot];
    for (int reads = 0; reads < READS_PER_POLL; reads++) {
        if (c->fd < 0 || c->read_closed || c->in_len == sizeof c->in ||
            s->queue_len == CONTROL_QUEUE_MAX)
            return;
        ssize_t n = recv(c->fd, c->in + c->in_len, sizeof c->in - c->in_len, 0);
        if (n > 0) {
            c->in_len += (size_t)n;
        } else if (n == 0) {
            c->read_closed = 1;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return;
        } else {
            c->read_closed = 1;
            c->peer_gone = 1;
        }
        control_client_lines(s, slot, limits);
    }
}

int control_poll(control_server *s, const command_limits *limits,
                 control_request *out, int max)
{
    if (!s)
        return 0;
    struct pollfd fds[1 + CONTROL_MAX_CLIENTS];
    int slot_of[1 + CONTROL_MAX_CLIENTS];
    int n = 0;
    fds[n++] = (struct pollfd){.fd = s->listen_fd, .events = POLLIN};
    for (int slot = 0; slot < CONTROL_MAX_CLIENTS; slot++) {
        control_client *c = &s->clients[slot];
        if (c->fd < 0)
            continue;
        short events = 0;
        if (!c->read_closed)
            events |= POLLIN;
        if (c->out_start < c->out_end)
            events |= POLLOUT;
        slot_of[n] = slot;
        fds[n++] = (struct pollfd){.fd = c->fd, .events = events};
    }

    int ready = poll(fds, (nfds_t)n, 0);
    /* New clients take free slots only, so slot_of stays valid. */
    if (ready > 0 && (fds[0].revents & POLLIN))
        control_accept(s, limits);
    for (int i = 1; ready > 0 && i < n; i++) {
        control_client *c = &s->clients[slot_of[i]];
        short revents = fds[i].revents;
        if (revents & POLLOUT)
            control_client_flush(c);
        if (c->fd >= 0 && (revents & (POLLIN | POLLHUP)))
            control_client_read(s, slot_of[i], limits);
        /* POLLHUP: closed, not merely shut down for writing (Linux). */
        if (c->fd >= 0 && (revents & (POLLHUP | POLLERR)))
            c->peer_gone = 1;
    }

    for (int slot = 0; slot < CONTROL_MAX_CLIENTS; slot++) {
        control_client *c = &s->clients[slot];
        if (c->fd < 0)
            continue;
        /* Lines left over when the queue was full. */
        control_client_lines(s, slot, limits);
        if (c->fd >= 0 && c->peer_gone && c->read_closed && c->in_len == 0)
            control_client_close(c);
    }

    int count = 0;
    while (out && count < max && s->queue_len > 0) {
        out[count++] = s->queue[s->queue_head];
        s->queue_head = (s->queue_head + 1) % CONTROL_QUEUE_MAX;
        s->queue_len--;
    }
    return count;
}

void control_reply(control_server *s, const control_request *req, int ok,
                   const char *message)
{
    control_reply_state(s, req, ok, message, NULL);
}

void control_reply_state(control_server *s, const control_request *req,
                         int ok, const char *message,
                         const record_state *state)
{
    if (!s || !req || req->client < 0 || req->client >= CONTROL_MAX_CLIENTS)
        return;
    control_client *c = &s->clients[req->client];
    if (c->fd < 0 || c->generation != req->generation)
        return;
    control_client_reply(s, c, ok, &req->cmd, message, state);
}

void control_broadcast(control_server *s, const char *line)
{
    if (!s || !line)
        return;
    for (int slot = 0; slot < CONTROL_MAX_CLIENTS; slot++)
        if (s->clients[slot].fd >= 0)
            control_client_send(&s->clients[slot], line);
}
