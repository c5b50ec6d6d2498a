/* The hung-rank watchdog of a multi-rank job. A rank that stops answering
 * (SIGSTOP, a hung device, a lost network) would leave every other rank
 * blocked in an MPI collective for ever. Each rank runs a thread that
 * watches its own collectives: when one has waited past the deadline, the
 * thread asks every other rank, over a duplicate communicator, where it
 * is. Ranks that do not answer within a few seconds, or that answer from
 * elsewhere (still computing, or in another collective), did not arrive.
 * The lowest rank left waiting names them on stderr with the trainer's
 * hint (the step, the checkpoint to resume from), leaves exit status 1
 * for the launcher and ends the job with MPI_Abort, which kills every
 * rank, the stopped one included (mpirun sends SIGCONT, SIGTERM, then
 * SIGKILL).
 *
 * Used by comm.c around each blocking call; the waits of a paused job
 * (comm_broadcast_idle) are not watched. Needs MPI_THREAD_MULTIPLE; with
 * less the job runs unwatched and says so once. */
#ifndef MOECTL_ENGINE_WATCHDOG_H
#define MOECTL_ENGINE_WATCHDOG_H

typedef struct comm_watchdog comm_watchdog;

/* NULL (unwatched) when the MPI library lacks thread support or on
 * failure; `world` ranks, this one `rank`. Every rank calls it (the
 * communicator is duplicated). */
comm_watchdog *watchdog_start(int rank, int world, double deadline_s);
/* Every rank calls it before MPI_Finalize. */
void watchdog_stop(comm_watchdog *w);

/* Around a blocking call of the main thread: `what` names it ("an
 * all-reduce"), a string that outlives the call. */
void watchdog_enter(comm_watchdog *w, const char *what);
void watchdog_leave(comm_watchdog *w);

void watchdog_set_deadline(comm_watchdog *w, double seconds);
double watchdog_deadline(const comm_watchdog *w);
/* Added to the report: "in step 42; the newest checkpoint is ...". */
void watchdog_set_hint(comm_watchdog *w, const char *hint);

#endif
