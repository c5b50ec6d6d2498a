/* The one launcher of a job: runs the engine (this executable, `moectl
 * run ... --headless --socket PATH`) as a child process in a private
 * directory (mode 0700) that holds its control socket and its log, waits
 * for the socket, and reaps the child. The console and the demo start
 * their jobs through it. */
#ifndef MOECTL_TUI_JOB_LAUNCHER_H
#define MOECTL_TUI_JOB_LAUNCHER_H

#include <stdio.h>
#include <sys/types.h>

#include "tui/job/client.h"

enum { JOB_LAUNCH_PATH_MAX = 108 }; /* a Unix socket address's limit */

typedef struct job_launch {
    const char *who;                      /* "moectl", "moectl demo" */
    char dir[64];                         /* the private directory */
    char socket_path[JOB_LAUNCH_PATH_MAX];
    char log_path[4096 + 16];             /* the private dir's, or the run
                                             directory's engine.log */
    pid_t pid;                            /* 0: not started */
    int reaped;
    int exit_status;                      /* once reaped; -1 by a signal */
} job_launch;

/* Creates /tmp/PREFIX-XXXXXX (mode 0700) and names control.sock and
 * engine.log in it. who prefixes the messages. Returns 0, or -1 with the
 * reason printed on stderr. */
int job_launch_init(job_launch *j, const char *who, const char *prefix);

/* The job's log goes to RUN_DIR/engine.log (the run directory, created
 * when missing) instead of the private directory. Returns 0, or -1 with
 * the reason printed. */
int job_launch_log_in(job_launch *j, const char *run_dir);

/* Starts the job: argv (NULL-terminated, argv[0] any name) is the command
 * line after this executable, and gets `--socket PATH` appended. Its input
 * is /dev/null and its output goes to the log. detach: the job gets a
 * session of its own, so that it outlives a console that loses its
 * terminal. Returns 0, or -1 with the reason printed. */
int job_launch_start(job_launch *j, char *const *argv, int detach);

/* Waits up to timeout_ms for the job's socket and connects c to it. If the
 * job exits first, or the time runs out, says so with the end of its log
 * on stderr and returns -1. */
int job_launch_connect(job_launch *j, job_client *c, int timeout_ms);

/* Reaps the job: block waits for it to end. Returns its exit status (-1
 * when a signal ended it), or -2 while it runs (block 0). */
int job_launch_wait(job_launch *j, int block);

/* Ends a job that is still running (SIGTERM) and reaps it. */
void job_launch_kill(job_launch *j);

/* Prints the last lines of the job's log to out. */
void job_launch_show_log(const job_launch *j, FILE *out, int lines);

/* The last line of a job's log that moectl wrote ("moectl: watchdog:
 * rank 1 ..."), without its newline: why a job that vanished ended. -1
 * when there is none. */
int job_log_last_word(const char *log_path, char *out, size_t size);

/* Removes the private directory if nothing is left in it (the log and the
 * socket, when they exist, stay for whoever wants to look). */
void job_launch_finish(job_launch *j);

#endif
