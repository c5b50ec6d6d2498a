#include "engine/core/watchdog.h"
#include "engine/core/clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moectl_build.h"

#if HAVE_MPI
#include <mpi.h>
#include <pthread.h>

enum {
    TAG_PROBE = 7101,  /* "where are you?": the prober's collective count */
    TAG_ANSWER = 7102, /* {probe, collectives entered, waiting in one} */
    TICK_MS = 100,
};
/* How long a prober waits for answers: a rank silent this long is taken
 * for stopped. */
static const double ANSWER_GRACE_S = 3.0;

struct comm_watchdog {
    MPI_Comm comm; /* the world, duplicated: probes never meet the job's
                      own messages */
    int rank, world;
    pthread_t thread;
    pthread_mutex_t lock;
    /* The main thread's, under lock. */
    long seq;          /* blocking calls entered */
    int waiting;       /* in one now */
    double since;      /* when it entered (monotonic s) */
    const char *what;
    double deadline;
    char hint[2048];
    volatile int stop;
    /* The thread's own. */
    int probing;
    long probe_seq;
    double probe_start;
    long *answer;      /* (world, 3): probe, seq, waiting; probe -1: none */
};

typedef struct watch_view {
    long seq;
    int waiting;
    double since, deadline;
    const char *what;
} watch_view;

static watch_view look(comm_watchdog *w)
{
    pthread_mutex_lock(&w->lock);
    watch_view v = {w->seq, w->waiting, w->since, w->deadline, w->what};
    pthread_mutex_unlock(&w->lock);
    return v;
}

/* The next message with `tag` waiting on the watchdog's communicator,
 * into buf (count longs): its sender, or -1 when none waits. */
static int next_message(comm_watchdog *w, int tag, long *buf, int count)
{
    int pending = 0;
    MPI_Status st;
    MPI_Iprobe(MPI_ANY_SOURCE, tag, w->comm, &pending, &st);
    if (!pending)
        return -1;
    MPI_Recv(buf, count, MPI_LONG, st.MPI_SOURCE, tag, w->comm,
             MPI_STATUS_IGNORE);
    return st.MPI_SOURCE;
}

/* Tells every prober where this rank is. Small messages go eagerly, so
 * MPI_Send does not wait for the prober. */
static void answer_probes(comm_watchdog *w)
{
    long probe;
    for (int from; (from = next_message(w, TAG_PROBE, &probe, 1)) >= 0;) {
        watch_view v = look(w);
        long answer[3] = {probe, v.seq, v.waiting};
        MPI_Send(answer, 3, MPI_LONG, from, TAG_ANSWER, w->comm);
    }
}

static void collect_answers(comm_watchdog *w)
{
    long answer[3];
    for (int from; (from = next_message(w, TAG_ANSWER, answer, 3)) >= 0;)
        if (answer[0] == w->probe_seq) /* not a stale probe's */
            memcpy(&w->answer[3 * from], answer, sizeof answer);
}

static void start_probe(comm_watchdog *w, long seq)
{
    w->probing = 1;
    w->probe_seq = seq;
    w->probe_start = clock_monotonic_s();
    for (int r = 0; r < w->world; r++) {
        w->answer[3 * r] = -1;
        if (r != w->rank)
            MPI_Send(&seq, 1, MPI_LONG, r, TAG_PROBE, w->comm);
    }
}

/* Arrived: answered from the same call, waiting in it. */
static int arrived(const comm_watchdog *w, int r)
{
    const long *a = &w->answer[3 * r];
    return r == w->rank || (a[0] == w->probe_seq && a[1] == w->probe_seq &&
                            a[2]);
}

static int all_answered(const comm_watchdog *w)
{
    for (int r = 0; r < w->world; r++)
        if (r != w->rank && w->answer[3 * r] != w->probe_seq)
            return 0;
    return 1;
}

/* "rank 1 does not answer (stopped, hung or unreachable); rank 2 is
 * still computing (it has not reached that call)". */
static int describe_missing(const comm_watchdog *w, char *out, size_t size)
{
    size_t n = 0;
    int missing = 0;
    out[0] = '\0';
    for (int r = 0; r < w->world && n < size; r++) {
        if (arrived(w, r))
            continue;
        const long *a = &w->answer[3 * r];
        const char *why =
            a[0] != w->probe_seq ? "does not answer (stopped, hung or "
                                   "unreachable)"
            : a[1] < w->probe_seq || !a[2]
                ? "answers but has not reached that call (still computing)"
                : "waits in another call (ranks out of step)";
        n += (size_t)snprintf(out + n, size - n, "%srank %d %s",
                              missing ? ", " : "", r, why);
        missing++;
    }
    return missing;
}

/* The lowest rank left waiting reports; the others give it time to, and
 * end the job themselves only if it does not. */
static void report_and_abort(comm_watchdog *w, const watch_view *v)
{
    for (int r = 0; r < w->rank; r++)
        if (arrived(w, r)) {
            struct timespec nap = {(time_t)(2 * ANSWER_GRACE_S), 0};
            nanosleep(&nap, NULL);
            break;
        }
    char why[1024], hint[sizeof w->hint];
    int missing = describe_missing(w, why, sizeof why);
    pthread_mutex_lock(&w->lock);
    memcpy(hint, w->hint, sizeof hint);
    pthread_mutex_unlock(&w->lock);
    double waited = clock_monotonic_s() - v->since;
    if (missing)
        fprintf(stderr, "moectl: watchdog: %s; rank %d waited %.0f s for "
                        "%s in %s (train.collective_timeout %.0f s). Every "
                        "rank is stopped%s%s\n", why, w->rank, waited,
                missing > 1 ? "them" : "it", v->what, v->deadline,
                hint[0] ? "; " : "", hint);
    else
        fprintf(stderr, "moectl: watchdog: every rank waits in %s for %.0f "
                        "s (train.collective_timeout %.0f s): the transport "
                        "hangs. Every rank is stopped%s%s\n", v->what,
                waited, v->deadline, hint[0] ? "; " : "", hint);
    fflush(stderr);
    const char *status_file = getenv("MOECTL_JOB_STATUS_FILE");
    FILE *f = status_file ? fopen(status_file, "w") : NULL;
    if (f) {
        fprintf(f, "1\n");
        fclose(f);
    }
    MPI_Abort(MPI_COMM_WORLD, 1);
}

static void *watch(void *arg)
{
    comm_watchdog *w = arg;
    struct timespec tick = {0, TICK_MS * 1000000L};
    while (!w->stop) {
        nanosleep(&tick, NULL);
        answer_probes(w);
        watch_view v = look(w);
        int overdue = v.waiting && v.deadline > 0 &&
                      clock_monotonic_s() - v.since > v.deadline;
        if (!w->probing) {
            if (overdue)
                start_probe(w, v.seq);
            continue;
        }
        collect_answers(w);
        if (!v.waiting || v.seq != w->probe_seq) {
            w->probing = 0; /* it arrived after all */
            continue;
        }
        if (all_answered(w) ||
            clock_monotonic_s() - w->probe_start > ANSWER_GRACE_S)
            report_and_abort(w, &v);
    }
    return NULL;
}

comm_watchdog *watchdog_start(int rank, int world, double deadline_s)
{
    int provided = 0;
    MPI_Query_thread(&provided);
    if (provided < MPI_THREAD_MULTIPLE) {
        if (rank == 0)
            fprintf(stderr, "moectl: this MPI library gives no "
                            "MPI_THREAD_MULTIPLE: the job runs without the "
                            "hung-rank watchdog\n");
        return NULL;
    }
    comm_watchdog *w = calloc(1, sizeof *w);
    long *answer = calloc((size_t)world * 3, sizeof *answer);
    if (!w || !answer) {
        free(w);
        free(answer);
        return NULL;
    }
    w->rank = rank;
    w->world = world;
    w->answer = answer;
    w->deadline = deadline_s;
    w->what = "a collective";
    pthread_mutex_init(&w->lock, NULL);
    MPI_Comm_dup(MPI_COMM_WORLD, &w->comm);
    if (pthread_create(&w->thread, NULL, watch, w) != 0) {
        MPI_Comm_free(&w->comm);
        pthread_mutex_destroy(&w->lock);
        free(answer);
        free(w);
        return NULL;
    }
    return w;
}

void watchdog_stop(comm_watchdog *w)
{
    if (!w)
        return;
    w->stop = 1;
    pthread_join(w->thread, NULL);
    MPI_Comm_free(&w->comm);
    pthread_mutex_destroy(&w->lock);
    free(w->answer);
    free(w);
}

void watchdog_enter(comm_watchdog *w, const char *what)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->seq++;
    w->waiting = 1;
    w->since = clock_monotonic_s();
    w->what = what;
    pthread_mutex_unlock(&w->lock);
}

void watchdog_leave(comm_watchdog *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->waiting = 0;
    pthread_mutex_unlock(&w->lock);
}

void watchdog_set_deadline(comm_watchdog *w, double seconds)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->deadline = seconds;
    pthread_mutex_unlock(&w->lock);
}

double watchdog_deadline(const comm_watchdog *w)
{
    return w ? w->deadline : 0;
}

void watchdog_set_hint(comm_watchdog *w, const char *hint)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    snprintf(w->hint, sizeof w->hint, "%s", hint);
    pthread_mutex_unlock(&w->lock);
}

#else /* no MPI: one rank, nothing to wait for */

comm_watchdog *watchdog_start(int rank, int world, double deadline_s)
{
    (void)rank, (void)world, (void)deadline_s;
    return NULL;
}
void watchdog_stop(comm_watchdog *w) { (void)w; }
void watchdog_enter(comm_watchdog *w, const char *what) { (void)w, (void)what; }
void watchdog_leave(comm_watchdog *w) { (void)w; }
void watchdog_set_deadline(comm_watchdog *w, double s) { (void)w, (void)s; }
double watchdog_deadline(const comm_watchdog *w) { (void)w; return 0; }
void watchdog_set_hint(comm_watchdog *w, const char *hint)
{
    (void)w, (void)hint;
}
#endif
