/* The control socket of engine rank 0: consoles and scripts connect over a
 * Unix-domain socket, send commands (one per line, the grammar of
 * engine/protocol/command.h) and receive one JSON Lines stream: the replies to their
 * commands and the records broadcast to every client.
 *
 * Reply records (record type "reply" of engine/protocol/record.h):
 *   {"type":"reply","ok":true,"command":"lr 0.0001","message":"...",
 *    "state":{...},"schema":2,"time":...,"run_id":"..."}
 *   {"type":"reply","ok":false,"command":"move 1.2 3","error":"...",...}
 *   {"type":"reply","ok":false,"error":"...",...} (a line that did not parse)
 * "message" is left out when the engine gave none; "state" (the job's
 * state after the command) when the engine gave none. The text is for
 * display; the facts are fields.
 *
 * Single-threaded: every call comes from the engine's own loop, and none of
 * them blocks. */
#ifndef MOECTL_ENGINE_CONTROL_H
#define MOECTL_ENGINE_CONTROL_H

#include "engine/protocol/command.h"
#include "engine/core/error.h"
#include "engine/protocol/record.h"

enum {
    CONTROL_MAX_CLIENTS = 32,
    CONTROL_LINE_MAX = 4096,            /* bytes in a command line, newline excluded */
    CONTROL_OUTPUT_MAX = 1 << 20,       /* bytes queued for one client before it is dropped */
    CONTROL_QUEUE_MAX = 64,             /* parsed commands waiting for control_poll */
};

typedef struct control_server control_server;

typedef struct control_request {
    command cmd;
    int client;             /* slot of the client that sent it */
    unsigned generation;    /* which connection in that slot */
} control_request;

/* Listens on a Unix-domain socket.
 * path NULL: a fresh private directory (mode 0700) made with mkdtemp under
 * $XDG_RUNTIME_DIR (when it is an absolute path) or /tmp, named
 * "moectl-XXXXXX", with the socket "control.sock" in it.
 * With a path: its directory must exist, belong to this user (or root) and
 * not be writable by group or others. A stale socket left at path by a job
 * that died is replaced; a live one (something accepts connections) or any
 * other kind of file is an error.
 * The socket has mode 0600 in both cases. */
int control_open(control_server **out, const char *path, moe_error *err);

const char *control_path(const control_server *s);

/* Closes every client and removes the socket (if it is still the one this
 * server made) and the directory control_open made. NULL is a no-op. */
void control_close(control_server *s);

/* Never blocks. Accepts new clients, reads what they sent and parses every
 * complete line with command_parse against limits: a malformed line gets an
 * immediate error reply, a parsed command is queued. Returns up to max queued
 * commands in out, oldest first (the rest stay for the next poll), and the
 * count. Also sends queued output and cleans up clients that went away.
 * While CONTROL_QUEUE_MAX commands wait, clients are not read from.
 * A line longer than CONTROL_LINE_MAX is an error reply and the rest of it is
 * discarded. An unfinished line is discarded when its client stops sending.
 * A client that only shut down its sending side keeps receiving replies and
 * broadcasts. Every request returned must get a control_reply. */
int control_poll(control_server *s, const command_limits *limits,
                 control_request *out, int max);

/* Sends the reply record to the client that sent req, if that connection is
 * still open. message may be NULL. */
void control_reply(control_server *s, const control_request *req, int ok,
                   const char *message);
/* The same with the job's state after the command (state may be NULL). */
void control_reply_state(control_server *s, const control_request *req,
                         int ok, const char *message,
                         const record_state *state);
/* The run_id stamped on every reply (metrics_attach_control sets it). */
void control_set_run_id(control_server *s, const char *run_id);

/* Queues one JSON Lines record (text without its newline; any newline in it
 * is sent as a space) for every client and sends what the sockets take now.
 * A client whose queued output would pass CONTROL_OUTPUT_MAX is dropped. */
void control_broadcast(control_server *s, const char *line);

int control_client_count(const control_server *s);

/* Kinds of record sent to every client as it attaches, in this order. */
enum { CONTROL_REMEMBER_RUN, CONTROL_REMEMBER_STEP, CONTROL_REMEMBER_VAL,
       CONTROL_REMEMBERED_MAX };
/* Keeps a copy of line as the latest record of kind. */
void control_remember(control_server *s, int kind, const char *line);

#endif
