#include "tui/job/launcher.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine/core/clock.h"

enum { SOCKET_POLL_MS = 50, LOG_LINE_BYTES = 512, LOG_LINES_MAX = 64 };

int job_launch_init(job_launch *j, const char *who, const char *prefix)
{
    memset(j, 0, sizeof *j);
    j->who = who;
    snprintf(j->dir, sizeof j->dir, "/tmp/%.40s-XXXXXX", prefix);
    if (!mkdtemp(j->dir)) {
        fprintf(stderr, "%s: cannot create a private directory: %s\n", who,
                strerror(errno));
        return -1;
    }
    snprintf(j->socket_path, sizeof j->socket_path, "%s/control.sock",
             j->dir);
    snprintf(j->log_path, sizeof j->log_path, "%s/engine.log", j->dir);
    return 0;
}

int job_launch_log_in(job_launch *j, const char *run_dir)
{
    char path[sizeof j->log_path];
    snprintf(path, sizeof path, "%s", run_dir);
    for (char *p = path + 1; *p; p++) /* mkdir -p */
        if (*p == '/') {
            *p = '\0';
            if (mkdir(path, 0755) < 0 && errno != EEXIST)
                break;
            *p = '/';
        }
    if (mkdir(path, 0755) < 0 && errno != EEXIST) {
        fprintf(stderr, "%s: cannot create the run directory %s: %s\n",
                j->who, run_dir, strerror(errno));
        return -1;
    }
    snprintf(j->log_path, sizeof j->log_path, "%s/engine.log", run_dir);
    return 0;
}

/* In the child: input from /dev/null, output to the log, then the job. */
static void exec_job(const job_launch *j, char **argv, int detach)
{
    if (detach)
        setsid();
    int null = open("/dev/null", O_RDONLY);
    int log = open(j->log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (null >= 0)
        dup2(null, STDIN_FILENO);
    if (log >= 0) {
        dup2(log, STDOUT_FILENO);
        dup2(log, STDERR_FILENO);
    }
    execv("/proc/self/exe", argv);
    _exit(127);
}

int job_launch_start(job_launch *j, char *const *argv, int detach)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    char **args = calloc((size_t)argc + 3, sizeof *args);
    if (!args) {
        fprintf(stderr, "%s: out of memory\n", j->who);
        return -1;
    }
    memcpy(args, argv, (size_t)argc * sizeof *args);
    args[argc] = "--socket";
    args[argc + 1] = j->socket_path;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0)
        exec_job(j, args, detach);
    free(args);
    if (pid < 0) {
        fprintf(stderr, "%s: cannot start the job: %s\n", j->who,
                strerror(errno));
        return -1;
    }
    j->pid = pid;
    return 0;
}

int job_launch_wait(job_launch *j, int block)
{
    if (j->pid <= 0 || j->reaped)
        return j->reaped ? j->exit_status : -1;
    int wstatus;
    pid_t got;
    while ((got = waitpid(j->pid, &wstatus, block ? 0 : WNOHANG)) < 0 &&
           errno == EINTR)
        ;
    if (got != j->pid)
        return got == 0 ? -2 : -1;
    j->reaped = 1;
    j->exit_status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1;
    return j->exit_status;
}

int job_launch_connect(job_launch *j, job_client *c, int timeout_ms)
{
    /* The job loads its data and builds the model before it listens. */
    long long deadline = clock_monotonic_ms() + timeout_ms;
    while (job_client_connect(c, j->socket_path) < 0) {
        int status = job_launch_wait(j, 0);
        if (status != -2) {
            fprintf(stderr, "%s: the job ended before it started listening "
                            "(exit status %d); its log %s:\n", j->who,
                    status, j->log_path);
            job_launch_show_log(j, stderr, 20);
            return -1;
        }
        if (clock_monotonic_ms() >= deadline) {
            fprintf(stderr, "%s: the job did not open %s within %d s; its "
                            "log %s:\n", j->who, j->socket_path,
                    timeout_ms / 1000, j->log_path);
            job_launch_show_log(j, stderr, 20);
            return -1;
        }
        struct timespec nap = {0, SOCKET_POLL_MS * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
    return 0;
}

void job_launch_kill(job_launch *j)
{
    if (j->pid > 0 && !j->reaped) {
        kill(j->pid, SIGTERM);
        job_launch_wait(j, 1);
    }
}

void job_launch_show_log(const job_launch *j, FILE *out, int lines)
{
    FILE *f = fopen(j->log_path, "r");
    if (!f)
        return;
    static char tail[LOG_LINES_MAX][LOG_LINE_BYTES];
    if (lines > LOG_LINES_MAX)
        lines = LOG_LINES_MAX;
    int n = 0;
    while (fgets(tail[n % lines], LOG_LINE_BYTES, f))
        n++;
    fclose(f);
    for (int i = n > lines ? n - lines : 0; i < n; i++)
        fputs(tail[i % lines], out);
}

void job_launch_finish(job_launch *j)
{
    if (j->dir[0])
        rmdir(j->dir); /* fails, as it should, unless it is empty */
}

int job_log_last_word(const char *log_path, char *out, size_t size)
{
    FILE *f = fopen(log_path, "r");
    if (!f)
        return -1;
    char line[LOG_LINE_BYTES];
    int found = 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "moectl: ", 8) == 0) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(out, size, "%s", line);
            found = 1;
        }
    fclose(f);
    return found ? 0 : -1;
}
