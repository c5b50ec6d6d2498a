/* The MPI transport between engine ranks: one rank per device. Every
 * collective here is called by all ranks in the same order. A build
 * without MPI (or a job of one rank) runs the same code with world 1. */
#ifndef MOECTL_ENGINE_COMM_H
#define MOECTL_ENGINE_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "engine/core/error.h"

struct comm_watchdog;

typedef struct comm {
    int rank;
    int world;
    int initialized; /* this process called MPI_Init */
    struct comm_watchdog *watchdog; /* engine/core/watchdog.h; NULL on one
                                       rank */
} comm;

/* The watchdog's deadline until the trainer sets one from measured steps
 * (start-up, the first step). */
#define COMM_FIRST_DEADLINE_S 600.0

/* Joins the MPI job when launched by mpirun, else a world of one. */
int comm_init(comm *c, int *argc, char ***argv, moe_error *err);
void comm_finish(comm *c);
/* Ends every rank of the job (after a failure on one of them). */
void comm_abort(const comm *c, int status);

void comm_barrier(const comm *c);
/* out (world * count) = every rank's `count` ints, in rank order. */
void comm_allgather_int(const comm *c, const int *in, int count, int *out);
/* out (Σ counts) = every rank's counts[r] ints at displs[r], in rank
 * order; `count` is this rank's. */
void comm_allgatherv_int(const comm *c, const int *in, int count,
                         const int *counts, const int *displs, int *out);
/* Floats of scratch comm_allreduce_sum_float needs for `count` floats. */
size_t comm_allreduce_scratch_count(const comm *c, size_t count);
/* Element-wise sums, the result identical on every rank: added in rank
 * order (not MPI_Allreduce, whose order may differ between ranks), with
 * the caller's scratch of comm_allreduce_scratch_count floats. */
void comm_allreduce_sum_float(const comm *c, float *data, size_t count,
                              float *scratch);
void comm_allreduce_sum_double(const comm *c, double *data, int count);
void comm_allreduce_max_double(const comm *c, double *data, int count);
/* Rows of `row` floats: rank r sends send_rows[r] rows (consecutive in
 * send, in rank order) and receives recv_rows[r] rows (consecutive in
 * recv, in rank order). */
void comm_alltoallv_rows(const comm *c, const float *send,
                         const int *send_rows, float *recv,
                         const int *recv_rows, int row);
void comm_broadcast(const comm *c, void *data, size_t bytes, int root);
/* comm_broadcast for waits of human length (a paused job): a rank waiting
 * for the root checks every nap_s seconds and sleeps in between, where
 * MPI's own wait would keep its core busy. */
void comm_broadcast_idle(const comm *c, void *data, size_t bytes, int root,
                         double nap_s);
void comm_send(const comm *c, const void *data, size_t bytes, int to);
void comm_recv(const comm *c, void *data, size_t bytes, int from);
/* The hung-rank watchdog (engine/core/watchdog.h): a blocking call that
 * waits longer than `seconds` ends the job naming the ranks that did not
 * arrive (0: never); the hint goes into that report. No-ops on one rank. */
void comm_set_deadline(const comm *c, double seconds);
double comm_deadline(const comm *c);
void comm_set_hang_hint(const comm *c, const char *hint);
/* Every rank leaves with the same verdict: -1 when `status` is negative on
 * any rank, with the lowest such rank's err message on every rank. */
int comm_agree(const comm *c, int status, moe_error *err);
/* Rank 0 receives every rank's `bytes` bytes into out (world * bytes). */
void comm_gather(const comm *c, const void *in, size_t bytes, void *out);

#endif
