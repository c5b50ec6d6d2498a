/* `moectl demo`: its options, the job it starts (through tui/job's
 * launcher), and the two ways it tells the story (tui/demo/story.c):
 * printed as text (headless), or in the console's narration pane. */
#include "engine/trainer/run_dir.h"
#include "tui/demo/demo.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/config/config.h"
#include "engine/core/clock.h"
#include "engine/core/signals.h"
#include "moectl_build.h"
#include "tui/console/console.h"
#include "tui/demo/story.h"
#include "tui/job/client.h"
#include "tui/job/launcher.h"

enum {
    DEMO_HOLD_MS = 5000,         /* --autoplay: a finished chapter stays */
    DEMO_WRAP_COLS = 78,
    DEMO_EXIT_RUNTIME = 1,
    DEMO_EXIT_USAGE = 2,
    DEMO_MAX_SETS = 256,
    DEMO_CONNECT_MS = 60000,     /* for the job's socket */
    DEMO_READ_WAIT_MS = 200,
};

/* ---- headless -------------------------------------------------------- */

static volatile sig_atomic_t demo_signal;

static void on_demo_signal(int sig)
{
    demo_signal = sig;
}

/* Prints text wrapped at DEMO_WRAP_COLS; lines starting with two blanks
 * are kept as they are. */
static void print_wrapped(FILE *out, const char *text)
{
    while (*text) {
        const char *end = strchr(text, '\n');
        size_t len = end ? (size_t)(end - text) : strlen(text);
        if (len >= 2 && text[0] == ' ' && text[1] == ' ') {
            fprintf(out, "%.*s\n", (int)len, text);
        } else {
            size_t at = 0;
            while (at < len) {
                while (at < len && text[at] == ' ')
                    at++;
                size_t take = len - at, cut = take;
                if (take > DEMO_WRAP_COLS) {
                    cut = DEMO_WRAP_COLS;
                    while (cut > 0 && text[at + cut] != ' ')
                        cut--;
                    if (cut == 0)
                        cut = DEMO_WRAP_COLS;
                }
                fprintf(out, "%.*s\n", (int)cut, text + at);
                at += cut;
            }
        }
        text += len + (end ? 1 : 0);
    }
}

static void client_send(void *client, const char *line)
{
    (void)job_client_send(client, line);
}

static int fold_line(void *d, const char *line)
{
    demo_record(d, line);
    return 0;
}

/* Prints each chapter as it finishes, then stops the job; returns once the
 * job has closed its socket. Returns 1 when the story failed. */
static int tell_headless(demo *d, job_client *client)
{
    d->send = client_send;
    d->send_ctx = client;
    demo_start_chapter(d, 0);
    printf("\n== %s ==\n", d->title);
    fflush(stdout);
    int connected = 1, stop_sent = 0, failed = 0;
    while (connected) {
        job_client_status read =
            job_client_read(client, DEMO_READ_WAIT_MS, fold_line, d);
        connected = read == JOB_CLIENT_OPEN ||
                    (read == JOB_CLIENT_FAILED && errno == EINTR);
        if (demo_signal && !stop_sent) {
            client_send(client, "stop");
            stop_sent = failed = 1;
        }
        while (!stop_sent && !d->story_over) {
            int r = demo_advance(d);
            if (r == 0)
                break;
            print_wrapped(stdout, d->text);
            if (r < 0) {
                failed = 1;
                d->story_over = 1;
            } else if (d->chapter + 1 < demo_chapter_count) {
                demo_start_chapter(d, d->chapter + 1);
                printf("\n== %s ==\n", d->title);
            } else {
                d->story_over = 1;
            }
            fflush(stdout);
        }
        if (d->story_over && !stop_sent) {
            client_send(client, "stop");
            stop_sent = 1;
        }
    }
    return failed;
}

static int run_headless(demo *d, char **engine_argv, job_launch *job,
                        const char *metrics_path, const char *run_dir)
{
    static const int signals[] = {SIGINT, SIGTERM, 0};
    signals_install(on_demo_signal, signals);
    job_client client;
    job_client_init(&client);
    if (job_launch_start(job, engine_argv, 0) < 0)
        return DEMO_EXIT_RUNTIME;
    if (job_launch_connect(job, &client, DEMO_CONNECT_MS) < 0) {
        job_launch_kill(job);
        return DEMO_EXIT_RUNTIME;
    }
    printf("moectl demo: the job's metrics go to %s\n", metrics_path);
    int failed = tell_headless(d, &client);
    job_client_close(&client);
    if (!d->story_over && !failed)
        fprintf(stderr, "moectl demo: the job ended at step %d before the "
                        "story did (%s); its log: %s\n", d->latest_step,
                d->status, job->log_path);
    int exit_status = job_launch_wait(job, 1);
    int clean = exit_status == 0 || exit_status == 3;
    if (d->story_over && !failed && clean) {
        printf("\nThe job %s at step %d; its run directory (checkpoints, "
               "metrics, log) is %s.\nmetrics: %s\n", d->v.status,
               d->v.step, run_dir, metrics_path);
        return 0;
    }
    if (!clean) {
        fprintf(stderr, "moectl demo: the job exited with status %d; its "
                        "log %s:\n", exit_status, job->log_path);
        job_launch_show_log(job, stderr, 16);
    }
    printf("metrics: %s\n", metrics_path);
    return demo_signal ? 3 : DEMO_EXIT_RUNTIME;
}

/* ---- in the console ---------------------------------------------------- */

typedef struct demo_narration {
    demo *d;
    int autoplay;
    char text[DEMO_TEXT_BYTES + 512];
} demo_narration;

static void narration_record(void *ctx, const char *line)
{
    demo_narration *n = ctx;
    demo_record(n->d, line);
}

static void narration_compose(demo_narration *n)
{
    demo *d = n->d;
    if (d->chapter_done)
        snprintf(n->text, sizeof n->text, "%s%s", d->text,
                 d->story_over
                     ? "The story is over; the job goes on under policy auto. "
                       "q stops it and leaves."
                 : n->autoplay ? "(next chapter in a few seconds)"
                               : "Enter: next chapter");
    else
        snprintf(n->text, sizeof n->text, "%s%s...", d->text, d->status);
}

static int narration_tick(void *ctx, console_send_fn send, void *console)
{
    demo_narration *n = ctx;
    demo *d = n->d;
    d->send = send;
    d->send_ctx = console;
    int changed = 0;
    if (!d->chapter_done) {
        char before[sizeof d->status];
        memcpy(before, d->status, sizeof before);
        int r = demo_advance(d);
        if (r < 0 || (r != 0 && d->chapter + 1 == demo_chapter_count))
            d->story_over = 1;
        changed = r != 0 || strcmp(before, d->status) != 0;
    } else if (n->autoplay && !d->story_over &&
               clock_monotonic_ms() - d->done_at_ms >= DEMO_HOLD_MS) {
        demo_start_chapter(d, d->chapter + 1);
        changed = 1;
    }
    if (changed)
        narration_compose(n);
    return changed;
}

static void narration_next(void *ctx)
{
    demo_narration *n = ctx;
    if (n->d->chapter_done && !n->d->story_over) {
        demo_start_chapter(n->d, n->d->chapter + 1);
        narration_compose(n);
    }
}

static int run_console(demo *d, char **engine_argv, int autoplay,
                       const char *metrics_path, const char *run_dir)
{
    static demo_narration n;
    n.d = d;
    n.autoplay = autoplay;
    demo_start_chapter(d, 0);
    narration_compose(&n);
    console_narrator narrator = {
        .ctx = &n,
        .record = narration_record,
        .tick = narration_tick,
        .next = narration_next,
        .title = d->title,
        .text = n.text,
    };
    int status = console_launch_narrated(engine_argv, run_dir, &narrator);
    printf("moectl demo: metrics: %s\n", metrics_path);
    /* Stopped by q is how the demo ends. */
    return status == 3 ? 0 : status;
}

/* ---- options ----------------------------------------------------------- */

static const char demo_usage[] =
    "usage: moectl demo [CONFIG] [--headless] [--autoplay] [--metrics PATH]\n"
    "                   [--steps-per-chapter N] [--set KEY=VALUE]...\n";

typedef struct demo_options {
    const char *config_path, *metrics;
    const char *sets[DEMO_MAX_SETS + 1];   /* the corpus's first, maybe */
    int set_count;
    int headless, autoplay;
    int window;
} demo_options;

static int parse_count(const char *text, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(text, &end, 10);
    if (end == text || *end || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

static int usage_error(const char *what, const char *arg)
{
    fprintf(stderr, "moectl demo: ");
    fprintf(stderr, what, arg);
    fprintf(stderr, "\n%s", demo_usage);
    return DEMO_EXIT_USAGE;
}

/* The corpus path is relative; run from elsewhere, the checkout's. */
static void add_corpus_set(demo_options *o)
{
    static char corpus_set[CONFIG_PATH_MAX + 16];
    if (access("data/kjv.txt", R_OK) != 0 &&
        access(MOECTL_SOURCE_ROOT "/data/kjv.txt", R_OK) == 0) {
        snprintf(corpus_set, sizeof corpus_set, "data.path=%s",
                 MOECTL_SOURCE_ROOT "/data/kjv.txt");
        o->sets[o->set_count++] = corpus_set;
    }
}

static int parse_options(int argc, char **argv, demo_options *o)
{
    memset(o, 0, sizeof *o);
    o->window = DEMO_WINDOW_DEFAULT;
    add_corpus_set(o);
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = strcmp(arg, "--metrics") == 0 ||
                    strcmp(arg, "--set") == 0 ||
                    strcmp(arg, "--steps-per-chapter") == 0;
        if (takes && !value)
            return usage_error("option %s needs a value", arg);
        if (strcmp(arg, "--headless") == 0) {
            o->headless = 1;
        } else if (strcmp(arg, "--autoplay") == 0) {
            o->autoplay = 1;
        } else if (strcmp(arg, "--metrics") == 0) {
            o->metrics = argv[++i];
        } else if (strcmp(arg, "--set") == 0) {
            if (o->set_count == DEMO_MAX_SETS) {
                fprintf(stderr, "moectl demo: too many --set options\n");
                return DEMO_EXIT_USAGE;
            }
            o->sets[o->set_count++] = argv[++i];
        } else if (strcmp(arg, "--steps-per-chapter") == 0) {
            if (parse_count(value, 10, DEMO_WINDOW_MAX, &o->window) < 0) {
                fprintf(stderr, "moectl demo: --steps-per-chapter needs an "
                                "integer from 10 to %d, got \"%s\"\n",
                        DEMO_WINDOW_MAX, value);
                return DEMO_EXIT_USAGE;
            }
            i++;
        } else if (arg[0] == '-' && arg[1]) {
            return usage_error("unknown option %s", arg);
        } else if (!o->config_path) {
            o->config_path = arg;
        } else {
            return usage_error("unexpected argument \"%s\"", arg);
        }
    }
    /* No terminal: the story is told as text, like `moectl run`. */
    if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO))
        o->headless = 1;
    if (!o->config_path)
        o->config_path = access("configs/demo.yaml", R_OK) == 0
                             ? "configs/demo.yaml"
                             : MOECTL_SOURCE_ROOT "/configs/demo.yaml";
    return 0;
}

/* `moectl run CONFIG --headless --name NAME [--metrics PATH] --set ...`,
 * NULL-ended. */
static char **engine_command(const demo_options *o, const char *run_name)
{
    char **engine = calloc((size_t)o->set_count * 2 + 10, sizeof *engine);
    if (!engine)
        return NULL;
    int n = 0;
    engine[n++] = "moectl";
    engine[n++] = "run";
    engine[n++] = (char *)o->config_path;
    engine[n++] = "--headless";
    engine[n++] = "--name";
    engine[n++] = (char *)run_name;
    if (o->metrics) {
        engine[n++] = "--metrics";
        engine[n++] = (char *)o->metrics;
    }
    for (int i = 0; i < o->set_count; i++) {
        engine[n++] = "--set";
        engine[n++] = (char *)o->sets[i];
    }
    engine[n] = NULL;
    return engine;
}

int demo_main(int argc, char **argv)
{
    static demo_options o;
    if (parse_options(argc, argv, &o) != 0)
        return DEMO_EXIT_USAGE;
    static config cfg;
    moe_error err = {{0}};
    if (config_load(&cfg, o.config_path, o.sets, o.set_count, &err) < 0) {
        fprintf(stderr, "%s\n", err.message);
        return DEMO_EXIT_USAGE;
    }
    if (cfg.cluster.device_count < 2 ||
        cfg.cluster.device_count > DEMO_MAX_RANKS) {
        fprintf(stderr, "moectl demo: the story needs 2 to %d devices; %s "
                        "has %d\n", DEMO_MAX_RANKS, o.config_path,
                cfg.cluster.device_count);
        return DEMO_EXIT_USAGE;
    }
    static demo d;
    /* The job's run directory (runs/NAME: its log, metrics, checkpoints)
     * and a private directory for its socket. */
    static char run_name[RUN_NAME_MAX], run_dir[CONFIG_PATH_MAX];
    static char metrics_path[CONFIG_PATH_MAX + 32];
    run_dir_default_name(run_name, sizeof run_name, cfg.name);
    run_dir_path(run_dir, sizeof run_dir, run_name);
    snprintf(metrics_path, sizeof metrics_path, "%s/metrics.jsonl", run_dir);
    if (o.metrics)
        snprintf(metrics_path, sizeof metrics_path, "%s", o.metrics);
    job_launch job;
    if (demo_init(&d, o.window, &cfg) < 0 ||
        job_launch_init(&job, "moectl demo", "moectl-demo") < 0 ||
        job_launch_log_in(&job, run_dir) < 0) {
        demo_finish(&d);
        return DEMO_EXIT_RUNTIME;
    }
    char **engine = engine_command(&o, run_name);
    int status = DEMO_EXIT_RUNTIME;
    if (engine && o.headless)
        status = run_headless(&d, engine, &job, metrics_path, run_dir);
    else if (engine)
        status = run_console(&d, engine, o.autoplay, metrics_path, run_dir);
    job_launch_finish(&job);
    free(engine);
    demo_finish(&d);
    return status;
}
