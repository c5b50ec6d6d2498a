/* moectl: the command-line entry. Parses arguments, loads the
 * configuration and hands over to a driver; only this file decides to
 * quit. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <string.h>
#include <unistd.h>

#include "engine/core/comm.h"
#include "engine/core/signals.h"
#include "engine/config/config.h"
#include "moectl_build.h"
#include "engine/trainer/bench.h"
#include "tui/console/console.h"
#include "tui/cli/ctl.h"
#include "tui/demo/demo.h"
#include "engine/trainer/headless.h"
#include "engine/trainer/run_dir.h"
#include "tui/cli/plan.h"
#include "tui/cli/ps.h"
#include "engine/protocol/registry.h"

enum { EXIT_RUNTIME = 1, EXIT_USAGE = 2 };
enum { MAX_SETS = 256, MAX_ARGS = 4 * MAX_SETS + 64,
       SCRIPT_TEXT_MAX = 16 << 20 };

/* The subcommands: `moectl NAME ...` runs run(argc, argv) with the whole
 * command line; `moectl --help` is generated from this table. A first word
 * that names none trains (`moectl [CONFIG]`). */
typedef struct subcommand {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *usage;   /* after "moectl NAME"; '\n' continues it */
    const char *help;    /* what it does; '\n' continues it */
    int sets_threads;    /* applies the BLAS/OpenMP thread settings first */
} subcommand;

static int train_command(int argc, char **argv);
static int check_command(int argc, char **argv);
static int ctl_command(int argc, char **argv);
static int attach_command(int argc, char **argv);
static int demo_command(int argc, char **argv);
static int ps_command(int argc, char **argv);

static const subcommand subcommands[] = {
    {"run", train_command,
     "CONFIG [--headless] [--steps N] [--name NAME]\n"
     "[--metrics PATH|-] [--resume CKPT|DIR|RUN]\n"
     "[--at STEP:COMMAND]... [--script OPS] [--socket PATH]\n"
     "[--prometheus [ADDR:]PORT] [--prometheus-textfile PATH]\n"
     "[--set KEY=VALUE]...",
     "train in the run directory runs/NAME (config.yaml, metrics.jsonl,\n"
     "checkpoints/, engine.log); a progress line goes to stderr\n"
     "(redrawn in place on a terminal), metrics also to --metrics; on a\n"
     "terminal, opens the console on the job (detach with q, reattach\n"
     "with moectl attach NAME); --headless or no terminal: a progress\n"
     "line instead", 1},
    {"check", check_command, "CONFIG [--set KEY=VALUE]...\n"
     "| --describe[=man]",
     "validate CONFIG with its overrides and print the resolved\n"
     "configuration; --describe prints every configuration key from\n"
     "the schema (=man: as the page moectl-config(5))", 1},
    {"plan", train_command, "CONFIG [--json] [--set KEY=VALUE]...",
     "what training CONFIG would cost, from an analytic model (no\n"
     "training): step time, tokens/s, MFU and cost per 1M/1B/1T\n"
     "tokens on the configured devices and on every mix of them,\n"
     "each device at its stated utilization (expected MFU);\n"
     "--json prints one JSON object", 1},
    {"ctl", ctl_command, "NAME|SOCKET COMMAND...",
     "send one command to a running job (its run name or control\n"
     "socket): pause, resume, stop, checkpoint, status, lr VALUE,\n"
     "move L.E R", 0},
    {"attach", attach_command, "NAME|SOCKET",
     "open the console on a running job (its run name or control\n"
     "socket)", 0},
    {"ps", ps_command, "",
     "list this user's running jobs: name, pid, step, ranks, status,\n"
     "uptime, control socket (entries of dead jobs are dropped)", 0},
    {"demo", demo_command,
     "[CONFIG] [--headless] [--autoplay] [--metrics PATH]\n"
     "[--steps-per-chapter N] [--set KEY=VALUE]...",
     "a guided story on a live job (configs/demo.yaml: two CPU\n"
     "ranks, one emulated 3x slower): uneven load, the straggler,\n"
     "a hand move, plan/apply, policy auto, cost per 1M tokens, all\n"
     "measured; Enter advances (--autoplay: by itself);\n"
     "--headless prints it and stops the job at the end;\n"
     "--steps-per-chapter N measures over N steps (200)", 1},
    {"bench", train_command,
     "[CONFIG] [--steps N] [--warmup N] [--repeat N]\n"
     "[--profile] [--no-peer] [--no-scaling] [--no-ranks]\n"
     "[--set KEY=VALUE]...",
     "training speed of CONFIG (default configs/bench.yaml) against\n"
     "OpenBLAS sgemm and the PyTorch peer (tests/bench/torch_peer.py\n"
     "run by /usr/bin/python3), with scaling rows; --profile adds\n"
     "the time per model part; --steps/--warmup set the measured\n"
     "and warm-up steps (20 and 5); --repeat N interleaved rounds,\n"
     "best of each kept (2); rank rows: tokens/s on 1, 2, 4 MPI\n"
     "ranks, the all-to-all share, the time to move one expert", 1},
};
enum { SUBCOMMANDS = sizeof subcommands / sizeof subcommands[0] };

static const subcommand *subcommand_find(const char *name)
{
    for (int i = 0; i < SUBCOMMANDS; i++)
        if (strcmp(subcommands[i].name, name) == 0)
            return &subcommands[i];
    return NULL;
}

/* text's lines, the first after what is already on the line, the others
 * indented by indent columns. */
static void print_continued(FILE *out, const char *text, int indent)
{
    for (;;) {
        size_t len = strcspn(text, "\n");
        fprintf(out, "%.*s\n", (int)len, text);
        if (!text[len])
            return;
        text += len + 1;
        fprintf(out, "%*s", indent, "");
    }
}

static const char options_text[] =
    "options:\n"
    "  --headless         run without the console\n"
    "  --steps N          stop after step N; the learning-rate schedule still\n"
    "                     spans train.steps (change that with --set)\n"
    "  --name NAME        the run's name: its directory is runs/NAME\n"
    "                     (default: the config's name and the UTC time)\n"
    "  --metrics PATH     also write JSON Lines metrics to PATH ('-': stdout)\n"
    "  --resume PATH      continue a run directory (runs/NAME) in place, or\n"
    "                     from a checkpoint, or the newest one in a\n"
    "                     checkpoint directory\n"
    "  --socket PATH      the control socket (default: a fresh private\n"
    "                     directory, printed at start)\n"
    "  --script OPS       run the commands of a script: lines STEP COMMAND,\n"
    "                     every N COMMAND, when METRIC OP VALUE COMMAND\n"
    "                     (# comments); a malformed one is refused first\n"
    "  --at STEP:COMMAND  apply a command (move L.E R, lr VALUE, checkpoint,\n"
    "                     stop) at the boundary after STEP, e.g.\n"
    "                     --at '50:move 1.3 0'\n"
    "  --prometheus [ADDR:]PORT\n"
    "                     serve Prometheus metrics at http://ADDR:PORT/metrics\n"
    "                     (ADDR default 127.0.0.1; port 0: any free one)\n"
    "  --prometheus-textfile PATH\n"
    "                     write them to PATH for node_exporter's textfile\n"
    "                     collector (rewritten whole, about once a second)\n"
    "  --set KEY=VALUE    override a configuration key, e.g.\n"
    "                     --set train.lr=1e-3 --set cluster.devices.0.threads=1\n"
    "\n"
    "exit status: 0 done, 1 runtime failure, 2 bad usage or configuration,\n"
    "3 stopped by a signal after writing a checkpoint.\n";

static void print_usage(FILE *out)
{
    fprintf(out, "usage: moectl [CONFIG]                       train CONFIG "
                 "(default: the\n%45s embedded configs/default.yaml)\n", "");
    for (int i = 0; i < SUBCOMMANDS; i++) {
        const subcommand *s = &subcommands[i];
        int indent = fprintf(out, "       moectl %s ", s->name);
        print_continued(out, s->usage, indent);
    }
    fprintf(out, "       moectl --help | --version\n\ncommands:\n");
    for (int i = 0; i < SUBCOMMANDS; i++) {
        fprintf(out, "  %-7s ", subcommands[i].name);
        print_continued(out, subcommands[i].help, 10);
    }
    fprintf(out, "\n%s", options_text);
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "moectl: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'moectl --help'.\n");
    return EXIT_USAGE;
}

static int describe_config(const char *format)
{
    if (format[0] && strcmp(format, "=man") != 0)
        return usage_error("unknown --describe format \"%s\" (expected "
                           "--describe or --describe=man)", format);
    config_describe_format f = format[0] ? CONFIG_DESCRIBE_MAN
                                         : CONFIG_DESCRIBE_TEXT;
    return config_describe(stdout, f) == 0 ? 0 : EXIT_RUNTIME;
}

/* Thread settings that BLAS and OpenMP read when they are loaded, before
 * main, so moectl re-executes itself once to apply them:
 * - OPENBLAS_CORETYPE: these machines preset an older core type, which
 *   halves GEMM speed; without it OpenBLAS uses the core it detects.
 *   MOECTL_KEEP_OPENBLAS_CORETYPE=1 keeps a deliberate setting.
 * - BLAS threads and OpenMP threads share the cores and take turns; threads
 *   that spin while the other pool works halve throughput on two cores, so
 *   idle threads sleep (OMP_WAIT_POLICY=passive) and BLAS threads stop
 *   spinning early (OPENBLAS_THREAD_TIMEOUT=4), unless the user set them. */
static void apply_thread_environment(char **argv)
{
    if (getenv("MOECTL_ENVIRONMENT_SET"))
        return;
    int change = 0;
    if (getenv("OPENBLAS_CORETYPE") &&
        !getenv("MOECTL_KEEP_OPENBLAS_CORETYPE")) {
        unsetenv("OPENBLAS_CORETYPE");
        change = 1;
    }
    if (!getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "passive", 1);
        change = 1;
    }
    if (!getenv("OPENBLAS_THREAD_TIMEOUT")) {
        setenv("OPENBLAS_THREAD_TIMEOUT", "4", 1);
        change = 1;
    }
    if (!change)
        return;
    setenv("MOECTL_ENVIRONMENT_SET", "1", 1);
    execv("/proc/self/exe", argv);
    /* If re-executing fails, carry on with the slower settings. */
}

typedef struct arguments {
    const char *command;
    const char *config_path; /* NULL: the embedded default */
    const char *sets[MAX_SETS];
    int set_count;
    const char *at[MAX_SETS];
    int at_count;
    headless_options headless;
    bench_options bench;
    plan_options plan;
    int headless_flag; /* --headless given */
    int first_option;  /* argv index after the command word */
} arguments;

static int parse_int(const char *text, int *out)
{
    char *end;
    long v = strtol(text, &end, 10);
    if (end == text || *end != '\0' || v < 1 || v > 1000000000)
        return -1;
    *out = (int)v;
    return 0;
}

/* argv[1] is the command word when it names a subcommand; otherwise the
 * command is run. */
static int parse_arguments(int argc, char **argv, arguments *a)
{
    int i = 1;
    a->command = "run";
    if (i < argc && subcommand_find(argv[i]))
        a->command = argv[i++];
    int bench = strcmp(a->command, "bench") == 0;
    int plan = strcmp(a->command, "plan") == 0;
    a->first_option = i;
    for (; i < argc; i++) {
        const char *arg = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        /* run's options that keep their value as it is */
        const struct {
            const char *name;
            const char **value;
        } texts[] = {
            {"--socket", &a->headless.socket},
            {"--script", &a->headless.script},
            {"--name", &a->headless.run_name},
            {"--prometheus", &a->headless.prometheus},
            {"--prometheus-textfile", &a->headless.prometheus_textfile},
            {"--metrics", &a->headless.metrics},
            {"--resume", &a->headless.resume},
        };
        const char **text = NULL;
        for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++)
            if (strcmp(arg, texts[k].name) == 0)
                text = texts[k].value;
        int takes_value = text || strcmp(arg, "--set") == 0 ||
                          strcmp(arg, "--steps") == 0 ||
                          strcmp(arg, "--warmup") == 0 ||
                          strcmp(arg, "--at") == 0 ||
                          strcmp(arg, "--repeat") == 0;
        if (takes_value && !value)
            return usage_error("option %s needs a value", arg);
        if (text) {
            *text = value;
            i++;
        } else if (strcmp(arg, "--set") == 0) {
            if (a->set_count == MAX_SETS)
                return usage_error("too many --set options (at most %s)",
                                   "256");
            a->sets[a->set_count++] = value;
            i++;
        } else if (strcmp(arg, "--at") == 0) {
            if (a->at_count == MAX_SETS)
                return usage_error("too many --at options (at most %s)",
                                   "256");
            a->at[a->at_count++] = value;
            i++;
        } else if (strcmp(arg, "--headless") == 0) {
            a->headless_flag = 1;
        } else if (strcmp(arg, "--steps") == 0) {
            if (parse_int(value, bench ? &a->bench.steps
                                       : &a->headless.steps) < 0)
                return usage_error("--steps needs a positive integer, got "
                                   "\"%s\"", value);
            i++;
        } else if (bench && strcmp(arg, "--warmup") == 0) {
            if (parse_int(value, &a->bench.warmup) < 0)
                return usage_error("--warmup needs a positive integer, got "
                                   "\"%s\"", value);
            i++;
        } else if (bench && strcmp(arg, "--repeat") == 0) {
            if (parse_int(value, &a->bench.repeats) < 0)
                return usage_error("--repeat needs a positive integer, got "
                                   "\"%s\"", value);
            i++;
        } else if (bench && strcmp(arg, "--profile") == 0) {
            a->bench.profile = 1;
        } else if (bench && strcmp(arg, "--no-peer") == 0) {
            a->bench.peer = NULL;
        } else if (bench && strcmp(arg, "--no-ranks") == 0) {
            a->bench.ranks = 0;
        } else if (bench && strcmp(arg, "--no-scaling") == 0) {
            a->bench.scaling = 0;
        } else if (plan && strcmp(arg, "--json") == 0) {
            a->plan.json = 1;
        } else if (arg[0] == '-' && arg[1] != '\0') {
            return usage_error("unknown option %s", arg);
        } else if (!a->config_path) {
            a->config_path = arg;
        } else {
            return usage_error("unexpected argument \"%s\"", arg);
        }
    }
    a->headless.at = a->at;
    a->headless.at_count = a->at_count;
    if (strcmp(a->command, "run") != 0 &&
        (a->headless.metrics || a->headless.resume || a->at_count ||
         a->headless.socket || a->headless.run_name ||
         a->headless.prometheus || a->headless.prometheus_textfile ||
         (!bench && a->headless.steps)))
        return usage_error("%s takes only CONFIG and --set", a->command);
    return 0;
}

static volatile sig_atomic_t mpirun_pid;

/* mpirun passes SIGINT and SIGTERM on to the ranks, which stop cleanly; a
 * hang-up would end mpirun itself and orphan them, so it goes on as
 * SIGTERM. */
static void forward_signal(int sig)
{
    if (mpirun_pid > 0)
        kill((pid_t)mpirun_pid, sig == SIGHUP ? SIGTERM : sig);
}

/* One rank per cluster device: a job of several devices starts under
 * mpirun (this process becomes mpirun), each rank runs this same command
 * line and joins the job. */
static int launch_mpirun(const config *cfg, const char *run_dir, int argc,
                         char **argv)
{
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        fprintf(stderr, "moectl: cannot find its own executable\n");
        return EXIT_RUNTIME;
    }
    self[n] = '\0';
    char ranks[16];
    snprintf(ranks, sizeof ranks, "%d", cfg->cluster.device_count);
    static char extra[CONFIG_PATH_MAX];
    snprintf(extra, sizeof extra, "%s", cfg->launcher.mpirun_args);
    int extra_words = 0;
    for (char *p = extra; *p; p++)
        extra_words += (p == extra || p[-1] == ' ') && *p != ' ';
    char **args = calloc((size_t)argc + (size_t)extra_words + 16,
                         sizeof *args);
    if (!args)
        return EXIT_RUNTIME;
    int k = 0;
    args[k++] = "mpirun";
    args[k++] = "-np";
    args[k++] = ranks;
    /* More ranks than cores is normal on small machines; ranks bring their
     * own thread settings. */
    args[k++] = "--oversubscribe";
    args[k++] = "--bind-to";
    args[k++] = "none";
    if (cfg->launcher.hostfile[0]) {
        args[k++] = "--hostfile";
        args[k++] = (char *)cfg->launcher.hostfile;
    }
    for (char *word = strtok(extra, " "); word; word = strtok(NULL, " "))
        args[k++] = word;
    args[k++] = self;
    for (int i = 1; i < argc; i++)
        args[k++] = argv[i];
    args[k] = NULL;
    if (getuid() == 0) {
        setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
        setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
    }
    /* mpirun reports any rank's nonzero exit as its own failure, so rank 0
     * leaves the job's real status (3 for a clean stop, say) in a file. */
    char status_dir[] = "/tmp/moectl-job-XXXXXX", status_path[64];
    if (!mkdtemp(status_dir)) {
        fprintf(stderr, "moectl: cannot create a temporary directory: %s\n",
                strerror(errno));
        free(args);
        return EXIT_RUNTIME;
    }
    snprintf(status_path, sizeof status_path, "%s/status", status_dir);
    setenv("MOECTL_JOB_STATUS_FILE", status_path, 1);
    fflush(NULL);
    pid_t child = fork();
    if (child == 0) {
        execvp("mpirun", args);
        fprintf(stderr, "moectl: cannot start mpirun for %d ranks: %s "
                        "(install openmpi-bin, or run scripts/setup.sh)\n",
                cfg->cluster.device_count, strerror(errno));
        _exit(EXIT_RUNTIME);
    }
    free(args);
    if (child < 0) {
        fprintf(stderr, "moectl: cannot fork: %s\n", strerror(errno));
        rmdir(status_dir);
        return EXIT_RUNTIME;
    }
    /* Signals go to mpirun, which passes them to the ranks. */
    mpirun_pid = child;
    static const int signals[] = {SIGINT, SIGTERM, SIGHUP, 0};
    signals_install(forward_signal, signals);
    int wstatus = 0;
    while (waitpid(child, &wstatus, 0) < 0 && errno == EINTR)
        ;
    int status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : EXIT_RUNTIME;
    FILE *f = fopen(status_path, "r");
    int reported = -1;
    if (f) {
        if (fscanf(f, "%d", &reported) == 1)
            status = reported;
        fclose(f);
        unlink(status_path);
    }
    rmdir(status_dir);
    /* mpirun killed outright (not by a signal we passed on): the ranks
     * died with it, and nobody else says so. */
    if (WIFSIGNALED(wstatus) && reported < 0)
        fprintf(stderr, "moectl: mpirun was killed by signal %d (%s), and "
                        "the job's %d ranks with it; continue from the "
                        "newest checkpoint with --resume %s\n",
                WTERMSIG(wstatus), strsignal(WTERMSIG(wstatus)),
                cfg->cluster.device_count,
                run_dir ? run_dir : "CHECKPOINT_DIR");
    return status;
}

static int run_ranks(const config *cfg, const headless_options *opt,
                     int argc, char **argv)
{
    comm c;
    moe_error err = {{0}};
    if (comm_init(&c, &argc, &argv, &err) < 0) {
        fprintf(stderr, "moectl: %s\n", err.message);
        return EXIT_RUNTIME;
    }
    if (c.world == 1 && cfg->cluster.device_count > 1) {
        /* Bad input is refused before any rank starts. */
        if (headless_check(cfg, opt) < 0)
            return EXIT_USAGE;
        return launch_mpirun(cfg, opt->run_dir, argc, argv);
    }
    int status = headless_run(cfg, opt, &c);
    const char *status_file = getenv("MOECTL_JOB_STATUS_FILE");
    if (c.world > 1 && c.rank == 0 && status_file) {
        FILE *f = fopen(status_file, "w");
        if (f) {
            fprintf(f, "%d\n", status);
            fclose(f);
        }
    }
    /* A rank that failed alone would leave the others waiting in a
     * collective: end the whole job. */
    if (c.world > 1 && status != 0 && status != 3 &&
        !headless_failed_together())
        comm_abort(&c, status);
    comm_finish(&c);
    /* A clean stop (3), and a start that failed on every rank together,
     * reach the launcher through the status file; handed to mpirun they
     * would print a page about a failed job. */
    if (c.world > 1 && status_file &&
        (status == 3 || headless_failed_together()))
        return 0;
    return status;
}

/* A job's control socket from its run name or path; NULL when neither
 * (said on stderr). */
static const char *job_socket(const char *who, const char *what)
{
    static char socket[REGISTRY_SOCKET_MAX];
    if (registry_socket_of(what, socket, sizeof socket) == 0)
        return socket;
    fprintf(stderr, "moectl %s: no running job is named %s (moectl ps lists "
                    "them), and no such socket\n", who, what);
    return NULL;
}

static int ctl_command(int argc, char **argv)
{
    const char *socket = argc > 2 ? job_socket("ctl", argv[2]) : NULL;
    if (argc > 2 && !socket)
        return EXIT_RUNTIME;
    return ctl_run(socket, argc > 3 ? argc - 3 : 0, argv + 3);
}

static int ps_command(int argc, char **argv)
{
    (void)argv;
    if (argc != 2) {
        fprintf(stderr, "usage: moectl ps\n");
        return EXIT_USAGE;
    }
    return ps_run(stdout);
}

/* check CONFIG ..., or check --describe[=man]: the schema's reference. */
static int check_command(int argc, char **argv)
{
    if (argc == 3 && strncmp(argv[2], "--describe", 10) == 0)
        return describe_config(argv[2] + 10);
    return train_command(argc, argv);
}

static int attach_command(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: moectl attach NAME|SOCKET\n");
        return EXIT_USAGE;
    }
    const char *socket = job_socket("attach", argv[2]);
    return socket ? console_attach(socket) : EXIT_RUNTIME;
}

static int demo_command(int argc, char **argv)
{
    return demo_main(argc - 2, argv + 2);
}

/* The run's name and directory (engine/trainer/run_dir.h): --resume of a
 * run directory continues that run; else --name, or the config's name and
 * the time. A new run's name is added to the command line (--name), so
 * that the console's job and every MPI rank use the same one. Returns 0,
 * or EXIT_USAGE after saying why. */
static int resolve_run(arguments *a, const config *cfg, int *argc,
                       char ***argv)
{
    static char name[RUN_NAME_MAX], dir[CONFIG_PATH_MAX];
    static char resume[CONFIG_PATH_MAX + 16];
    static char *named[MAX_ARGS + 3];
    headless_options *h = &a->headless;
    char found[RUN_NAME_MAX], why[160];
    int under_mpirun = getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE");
    if (h->resume && run_dir_is_run(h->resume, found, sizeof found)) {
        if (h->run_name && strcmp(h->run_name, found) != 0) {
            fprintf(stderr, "moectl: --resume %s continues the run %s; "
                            "--name %s would name another\n", h->resume,
                    found, h->run_name);
            return EXIT_USAGE;
        }
        snprintf(name, sizeof name, "%s", found);
        snprintf(dir, sizeof dir, "%s", h->resume);
        snprintf(resume, sizeof resume, "%s/checkpoints", dir);
        h->resume = resume;
        h->resume_run = 1;
    } else if (h->run_name) {
        if (run_dir_check_name(h->run_name, why, sizeof why) < 0) {
            fprintf(stderr, "moectl: --name %s: %s\n", h->run_name, why);
            return EXIT_USAGE;
        }
        snprintf(name, sizeof name, "%s", h->run_name);
        run_dir_path(dir, sizeof dir, name);
    } else {
        /* The time names it; a second run in the same second gets -2. */
        char base[RUN_NAME_MAX - 8], probe[CONFIG_PATH_MAX];
        run_dir_default_name(base, sizeof base, cfg->name);
        snprintf(name, sizeof name, "%s", base);
        run_dir_path(probe, sizeof probe, name);
        for (int k = 2; access(probe, F_OK) == 0 && k < 100; k++) {
            snprintf(name, sizeof name, "%s-%d", base, k);
            run_dir_path(probe, sizeof probe, name);
        }
        snprintf(dir, sizeof dir, "%s", probe);
    }
    char held[CONFIG_PATH_MAX + 16];
    snprintf(held, sizeof held, "%s/metrics.jsonl", dir);
    if (!h->resume_run && !under_mpirun && access(held, F_OK) == 0) {
        fprintf(stderr, "moectl: the run directory %s already holds a run; "
                        "give this one another --name, or continue that "
                        "one with --resume %s\n", dir, dir);
        return EXIT_USAGE;
    }
    h->run_name = name;
    h->run_dir = dir;
    int given = 0;
    for (int i = 1; i < *argc; i++)
        given |= strcmp((*argv)[i], "--name") == 0;
    if (!given && *argc <= MAX_ARGS) {
        memcpy(named, *argv, (size_t)*argc * sizeof *named);
        named[*argc] = "--name";
        named[*argc + 1] = name;
        named[*argc + 2] = NULL;
        *argc += 2;
        *argv = named;
    }
    return 0;
}

/* The files run's options name, before anything starts: the run
 * directory can be made and written, --metrics can be written, --script
 * and a --resume file are regular files (a FIFO would block). */
static int check_run_files(const headless_options *h)
{
    char why[CONFIG_PATH_MAX + 160], parent[CONFIG_PATH_MAX];
    if (h->run_dir && !h->resume_run &&
        config_dir_writable(h->run_dir, why, sizeof why) < 0) {
        fprintf(stderr, "moectl: cannot make the run directory %s: %s\n",
                h->run_dir, why);
        return EXIT_USAGE;
    }
    long long bytes = 0;
    if (h->script &&
        config_regular_file(h->script, &bytes, why, sizeof why) < 0) {
        fprintf(stderr, "moectl: --script %s\n", why);
        return EXIT_USAGE;
    }
    if (h->script && bytes > SCRIPT_TEXT_MAX) {
        fprintf(stderr, "moectl: --script %s: %lld bytes is too large for a "
                        "script (at most %d)\n", h->script, bytes,
                SCRIPT_TEXT_MAX);
        return EXIT_USAGE;
    }
    if (h->metrics && strcmp(h->metrics, "-") != 0) {
        snprintf(parent, sizeof parent, "%s", h->metrics);
        char *slash = strrchr(parent, '/');
        if (slash)
            slash[slash == parent] = '\0';
        else
            snprintf(parent, sizeof parent, ".");
        struct stat st;
        int is_dir = stat(h->metrics, &st) == 0 && S_ISDIR(st.st_mode);
        if (is_dir || config_dir_writable(parent, why, sizeof why) < 0) {
            fprintf(stderr, "moectl: --metrics %s: %s\n", h->metrics,
                    is_dir ? "is a directory" : why);
            return EXIT_USAGE;
        }
    }
    return 0;
}

/* On a terminal, and unless --headless: the console, which runs this same
 * command line headless as its job. */
static int console_command(const arguments *a, int argc, char **argv)
{
    char **engine = calloc((size_t)argc + 4, sizeof *engine);
    if (!engine)
        return EXIT_RUNTIME;
    int n = 0;
    engine[n++] = argv[0];
    engine[n++] = "run";
    for (int i = a->first_option; i < argc; i++)
        engine[n++] = argv[i];
    engine[n++] = "--headless";
    engine[n] = NULL;
    int status = console_launch(engine, a->headless.run_dir);
    free(engine);
    return status;
}

/* run (also the default), check, plan and bench: a configuration, then
 * what to do with it. */
static int train_command(int argc, char **argv)
{
    static arguments a;
    memset(&a, 0, sizeof a);
    a.bench = (bench_options){
        .warmup = 5,
        .steps = 20,
        .peer = MOECTL_SOURCE_ROOT "/tests/bench/torch_peer.py",
        .python = "/usr/bin/python3",
        .scaling = 1,
        .scaling_steps = 8,
        .repeats = 2,
        .ranks = 1,
    };
    if (parse_arguments(argc, argv, &a) != 0)
        return EXIT_USAGE;
    if (strcmp(a.command, "bench") == 0 && !a.config_path)
        a.config_path = access("configs/bench.yaml", R_OK) == 0
                            ? "configs/bench.yaml"
                            : MOECTL_SOURCE_ROOT "/configs/bench.yaml";
    if ((strcmp(a.command, "check") == 0 || strcmp(a.command, "plan") == 0) &&
        !a.config_path)
        return usage_error("%s needs a CONFIG file", a.command);

    static config cfg;
    moe_error err = {{0}};
    /* run and check are one gate: what a run needs of the file system is
     * checked by both, before anything starts. */
    int for_run = strcmp(a.command, "run") == 0 ||
                  strcmp(a.command, "check") == 0;
    if ((for_run ? config_load_for_run : config_load)(
            &cfg, a.config_path, a.sets, a.set_count, &err) < 0) {
        fprintf(stderr, "%s\n", err.message);
        return EXIT_USAGE;
    }
    if (strcmp(a.command, "check") == 0) {
        config_print(&cfg, stdout);
        return fflush(stdout) == 0 ? 0 : EXIT_RUNTIME;
    }
    if (strcmp(a.command, "bench") == 0)
        return bench_run(&cfg, &a.bench);
    if (strcmp(a.command, "plan") == 0)
        return plan_run(&cfg, &a.plan);
    int status = resolve_run(&a, &cfg, &argc, &argv);
    if (status == 0)
        status = check_run_files(&a.headless);
    if (status != 0)
        return status;
    /* A rank started by mpirun is never a console. */
    if (!a.headless_flag && isatty(STDIN_FILENO) && isatty(STDOUT_FILENO) &&
        !getenv("OMPI_COMM_WORLD_SIZE") && !getenv("PMI_SIZE"))
        return console_command(&a, argc, argv);
    return run_ranks(&cfg, &a.headless, argc, argv);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            print_usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("moectl %s\n", MOECTL_VERSION);
            return 0;
        }
    }
    const subcommand *command = argc > 1 ? subcommand_find(argv[1]) : NULL;
    if (!command)
        command = subcommand_find("run");
    if (command->sets_threads)
        apply_thread_environment(argv);
    return command->run(argc, argv);
}
