#include "tui/cli/ps.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/protocol/registry.h"

enum { TAIL_BYTES = 1 << 16 };

/* The job's latest state (step, last step, paused) from the records at the
 * end of its metrics: 0, or -1 when none is there yet. */
static int latest_state(const char *run_dir, int *step, int *last_step,
                        int *paused)
{
    char path[CONFIG_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    static char buf[TAIL_BYTES + 1];
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        fseek(f, size > TAIL_BYTES ? size - TAIL_BYTES : 0, SEEK_SET);
    }
    size_t n = fread(buf, 1, TAIL_BYTES, f);
    fclose(f);
    buf[n] = '\0';
    int found = -1;
    /* Whole lines only (the first may be cut by the seek); the last
     * record with a state part wins. */
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        json_t *r = json_loads(line, 0, NULL);
        json_t *state = r ? json_object_get(r, "state") : NULL;
        json_int_t s, last;
        int p;
        if (state && json_unpack(state, "{s:I, s:I, s:b}", "step", &s,
                                 "last_step", &last, "paused", &p) == 0) {
            *step = (int)s;
            *last_step = (int)last;
            *paused = p;
            found = 0;
        }
        json_decref(r);
    }
    return found;
}

int ps_run(FILE *out)
{
    registry_entry *jobs;
    int count;
    moe_error err;
    if (registry_list(&jobs, &count, &err) < 0) {
        fprintf(stderr, "moectl ps: %s\n", err.message);
        return 1;
    }
    if (count == 0) {
        fprintf(out, "no running jobs\n");
        free(jobs);
        return 0;
    }
    fprintf(out, "%-28s %8s %15s %5s %-8s %9s  %s\n", "NAME", "PID", "STEP",
            "RANKS", "STATUS", "UPTIME", "SOCKET");
    time_t now = time(NULL);
    for (int i = 0; i < count; i++) {
        const registry_entry *e = &jobs[i];
        int step = 0, last = 0, paused = 0;
        char steps[32] = "starting", status[16] = "starting";
        if (latest_state(e->run_dir, &step, &last, &paused) == 0) {
            snprintf(steps, sizeof steps, "%d/%d", step, last);
            snprintf(status, sizeof status, "%s",
                     paused ? "paused" : "running");
        }
        long up = (long)(now - (time_t)e->started);
        char uptime[48];
        if (up >= 3600)
            snprintf(uptime, sizeof uptime, "%ldh%02ldm", up / 3600,
                     up / 60 % 60);
        else
            snprintf(uptime, sizeof uptime, "%ldm%02lds", up / 60, up % 60);
        fprintf(out, "%-28s %8ld %15s %5d %-8s %9s  %s\n", e->name, e->pid,
                steps, e->ranks, status, uptime, e->socket);
    }
    free(jobs);
    return 0;
}
