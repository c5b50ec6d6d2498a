#include "engine/core/comm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moectl_build.h"
#include "engine/core/watchdog.h"

#if HAVE_MPI
#include <mpi.h>

/* MPI's default error handler aborts the whole job with the failing call
 * named, which is the behaviour wanted for a transport failure: a hung
 * job is worse. */

int comm_init(comm *c, int *argc, char ***argv, moe_error *err)
{
    memset(c, 0, sizeof *c);
    c->world = 1;
    /* Only a process started by mpirun joins a job; a plain `moectl run`
     * of one rank needs no MPI at all. */
    if (!getenv("OMPI_COMM_WORLD_SIZE") && !getenv("PMI_SIZE") &&
        !getenv("PMIX_RANK"))
        return 0;
    int provided = 0;
    /* MULTIPLE: the watchdog's thread asks the other ranks where they
     * are while this one waits in a collective. */
    CHECK_CALL(err, MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE,
                                    &provided));
    c->initialized = 1;
    CHECK_CALL(err, MPI_Comm_rank(MPI_COMM_WORLD, &c->rank));
    CHECK_CALL(err, MPI_Comm_size(MPI_COMM_WORLD, &c->world));
    if (c->world > 1)
        c->watchdog = watchdog_start(c->rank, c->world,
                                     COMM_FIRST_DEADLINE_S);
    return 0;
}

void comm_finish(comm *c)
{
    watchdog_stop(c->watchdog);
    c->watchdog = NULL;
    if (c->initialized)
        MPI_Finalize();
    c->initialized = 0;
}

/* A blocking call under the watchdog's eye. */
#define WATCHED(c, what, call)                                                 \
    do {                                                                       \
        watchdog_enter((c)->watchdog, what);                                   \
        call;                                                                  \
        watchdog_leave((c)->watchdog);                                         \
    } while (0)

void comm_abort(const comm *c, int status)
{
    if (c->initialized)
        MPI_Abort(MPI_COMM_WORLD, status);
}

void comm_barrier(const comm *c)
{
    if (c->world > 1)
        WATCHED(c, "a barrier", MPI_Barrier(MPI_COMM_WORLD));
}

void comm_allgather_int(const comm *c, const int *in, int count, int *out)
{
    if (c->world == 1) {
        memmove(out, in, (size_t)count * sizeof *in);
        return;
    }
    WATCHED(c, "an all-gather",
            MPI_Allgather(in, count, MPI_INT, out, count, MPI_INT,
                          MPI_COMM_WORLD));
}

void comm_allgatherv_int(const comm *c, const int *in, int count,
                         const int *counts, const int *displs, int *out)
{
    if (c->world == 1) {
        memmove(out, in, (size_t)count * sizeof *in);
        return;
    }
    WATCHED(c, "an all-gather",
            MPI_Allgatherv(in, count, MPI_INT, out, counts, displs, MPI_INT,
                           MPI_COMM_WORLD));
}

enum { ALLREDUCE_CHUNK = 1 << 20 };

size_t comm_allreduce_scratch_count(const comm *c, size_t count)
{
    size_t rows = count < ALLREDUCE_CHUNK ? count : ALLREDUCE_CHUNK;
    return (size_t)c->world * (rows ? rows : 1);
}

/* Sums in a fixed order on every rank: gather all contributions, add them
 * in rank order. MPI_Allreduce leaves the order to the implementation. */
void comm_allreduce_sum_float(const comm *c, float *data, size_t count,
                              float *scratch)
{
    if (c->world == 1)
        return;
    const size_t chunk = ALLREDUCE_CHUNK;
    float *all = scratch;
    for (size_t start = 0; start < count; start += chunk) {
        int n = (int)(count - start < chunk ? count - start : chunk);
        WATCHED(c, "the gradient all-reduce",
                MPI_Allgather(data + start, n, MPI_FLOAT, all, n, MPI_FLOAT,
                              MPI_COMM_WORLD));
        for (int i = 0; i < n; i++) {
            float sum = all[i];
            for (int r = 1; r < c->world; r++)
                sum += all[(size_t)r * n + i];
            data[start + i] = sum;
        }
    }
}

void comm_allreduce_sum_double(const comm *c, double *data, int count)
{
    if (c->world > 1)
        WATCHED(c, "an all-reduce",
                MPI_Allreduce(MPI_IN_PLACE, data, count, MPI_DOUBLE, MPI_SUM,
                              MPI_COMM_WORLD));
}

void comm_allreduce_max_double(const comm *c, double *data, int count)
{
    if (c->world > 1)
        WATCHED(c, "an all-reduce",
                MPI_Allreduce(MPI_IN_PLACE, data, count, MPI_DOUBLE, MPI_MAX,
                              MPI_COMM_WORLD));
}

void comm_alltoallv_rows(const comm *c, const float *send,
                         const int *send_rows, float *recv,
                         const int *recv_rows, int row)
{
    if (c->world == 1) {
        memmove(recv, send, (size_t)send_rows[0] * row * sizeof *send);
        return;
    }
    int *counts = malloc((size_t)4 * c->world * sizeof *counts);
    int *send_counts = counts, *send_offsets = counts + c->world,
        *recv_counts = counts + 2 * c->world,
        *recv_offsets = counts + 3 * c->world;
    int send_at = 0, recv_at = 0;
    for (int r = 0; r < c->world; r++) {
        send_counts[r] = send_rows[r] * row;
        recv_counts[r] = recv_rows[r] * row;
        send_offsets[r] = send_at;
        recv_offsets[r] = recv_at;
        send_at += send_counts[r];
        recv_at += recv_counts[r];
    }
    WATCHED(c, "the token all-to-all",
            MPI_Alltoallv(send, send_counts, send_offsets, MPI_FLOAT, recv,
                          recv_counts, recv_offsets, MPI_FLOAT,
                          MPI_COMM_WORLD));
    free(counts);
}

void comm_broadcast(const comm *c, void *data, size_t bytes, int root)
{
    if (c->world > 1)
        WATCHED(c, "a broadcast",
                MPI_Bcast(data, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD));
}

void comm_broadcast_idle(const comm *c, void *data, size_t bytes, int root,
                         double nap_s)
{
    if (c->world == 1)
        return;
    MPI_Request request;
    MPI_Ibcast(data, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD, &request);
    struct timespec nap = {(time_t)nap_s,
                           (long)((nap_s - (double)(time_t)nap_s) * 1e9)};
    for (int done = 0;;) {
        MPI_Test(&request, &done, MPI_STATUS_IGNORE);
        if (done)
            return;
        nanosleep(&nap, NULL);
    }
}

void comm_send(const comm *c, const void *data, size_t bytes, int to)
{
    WATCHED(c, "a send",
            MPI_Send(data, (int)bytes, MPI_BYTE, to, 0, MPI_COMM_WORLD));
}

void comm_recv(const comm *c, void *data, size_t bytes, int from)
{
    WATCHED(c, "a receive",
            MPI_Recv(data, (int)bytes, MPI_BYTE, from, 0, MPI_COMM_WORLD,
                     MPI_STATUS_IGNORE));
}

void comm_gather(const comm *c, const void *in, size_t bytes, void *out)
{
    if (c->world == 1) {
        memmove(out, in, bytes);
        return;
    }
    WATCHED(c, "a gather",
            MPI_Gather(in, (int)bytes, MPI_BYTE, out, (int)bytes, MPI_BYTE, 0,
                       MPI_COMM_WORLD));
}

#else /* a world of one */

int comm_init(comm *c, int *argc, char ***argv, moe_error *err)
{
    (void)argc, (void)argv;
    memset(c, 0, sizeof *c);
    c->world = 1;
    if (getenv("OMPI_COMM_WORLD_SIZE"))
        return error_set(err, "this moectl was built without MPI, but was "
                              "started by mpirun");
    return 0;
}

void comm_finish(comm *c) { (void)c; }
void comm_abort(const comm *c, int status) { (void)c, (void)status; }
void comm_barrier(const comm *c) { (void)c; }

void comm_allgather_int(const comm *c, const int *in, int count, int *out)
{
    (void)c;
    memmove(out, in, (size_t)count * sizeof *in);
}

void comm_allgatherv_int(const comm *c, const int *in, int count,
                         const int *counts, const int *displs, int *out)
{
    (void)c, (void)counts, (void)displs;
    memmove(out, in, (size_t)count * sizeof *in);
}

size_t comm_allreduce_scratch_count(const comm *c, size_t count)
{
    (void)c, (void)count;
    return 1;
}

void comm_allreduce_sum_float(const comm *c, float *data, size_t count,
                              float *scratch)
{
    (void)c, (void)data, (void)count, (void)scratch;
}

void comm_allreduce_sum_double(const comm *c, double *data, int count)
{
    (void)c, (void)data, (void)count;
}

void comm_allreduce_max_double(const comm *c, double *data, int count)
{
    (void)c, (void)data, (void)count;
}

void comm_alltoallv_rows(const comm *c, const float *send,
                         const int *send_rows, float *recv,
                         const int *recv_rows, int row)
{
    (void)c, (void)recv_rows;
    memmove(recv, send, (size_t)send_rows[0] * row * sizeof *send);
}

void comm_broadcast(const comm *c, void *data, size_t bytes, int root)
{
    (void)c, (void)data, (void)bytes, (void)root;
}

void comm_broadcast_idle(const comm *c, void *data, size_t bytes, int root,
                         double nap_s)
{
    (void)c, (void)data, (void)bytes, (void)root, (void)nap_s;
}

void comm_send(const comm *c, const void *data, size_t bytes, int to)
{
    (void)c, (void)data, (void)bytes, (void)to;
}

void comm_recv(const comm *c, void *data, size_t bytes, int from)
{
    (void)c, (void)data, (void)bytes, (void)from;
}

void comm_gather(const comm *c, const void *in, size_t bytes, void *out)
{
    (void)c;
    memmove(out, in, bytes);
}
#endif

void comm_set_deadline(const comm *c, double seconds)
{
    watchdog_set_deadline(c->watchdog, seconds);
}

double comm_deadline(const comm *c)
{
    return watchdog_deadline(c->watchdog);
}

void comm_set_hang_hint(const comm *c, const char *hint)
{
    watchdog_set_hint(c->watchdog, hint);
}

int comm_agree(const comm *c, int status, moe_error *err)
{
    if (c->world == 1)
        return status < 0 ? -1 : status;
    /* The lowest failing rank, as the highest of world - rank. */
    double first = status < 0 ? c->world - c->rank : 0;
    comm_allreduce_max_double(c, &first, 1);
    if (first == 0)
        return status;
    comm_broadcast(c, err->message, sizeof err->message,
                   c->world - (int)first);
    return -1;
}
