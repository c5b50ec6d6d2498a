/* The analytic step model behind `moectl plan`: what a training step of a
 * configuration takes and costs on its cluster and on every mix of its
 * device types, without training (no MPI, no clock).
 *
 * A mix is a set of cluster.devices entries (types), each with its count
 * n_j; every device is one rank, N = Σ n_j. A device of type j computes
 * at s_j = utilization_j · peak_tflops_j · 1e12 FLOP/s and moves
 * b_j = link_gbps_j · 1e9 bytes/s each way. A step trains
 * G = train.batch_size · model.seq_len tokens at COST_FLOP_PER_PARAM_TOKEN
 * (6) FLOP per parameter and token:
 *
 *   W_d = 6 · dense · G                       the dense work
 *   W_e = 6 · top_k · expert · n_layers · G   the routed experts' work
 *   V   = 4 · G · top_k · n_layers · d_model · exchange_bytes
 *         the all-to-all's volume: each token's activation to each of its
 *         experts and back, forward and backward
 *
 * The one planner of the live trainer's two levers, in the fluid limit:
 * type j trains a fraction δ_j of the batch's rows and runs a fraction ε_j
 * of every layer's expert rows (experts split between devices where the
 * work needs it). A device of type j then takes
 *
 *   t_j = (δ_j W_d + ε_j W_e) / (n_j s_j)
 *       + (δ_j + ε_j) · V · (N - 1) / N / (2 n_j b_j)
 *
 * (its tokens go out and come back, its experts' rows come in and go
 * back; the remote fraction (N-1)/N of them crosses its link), and a step
 *
 *   T = max_j t_j + S,
 *   S = k · dense · exchange_bytes · (N - 1) / N / min_j b_j
 *
 * where S is the dense gradients' ring all-reduce, bound by the slowest
 * link (k = 2; 3 when plan.dense is sharded: reduce-scatter, and the
 * parameters gathered forward and backward). No overlap of communication
 * with compute is assumed. δ and ε minimise T subject to Σδ = Σε = 1,
 * every device at least one row (δ_j ≥ n_j / batch_size) and its memory:
 * dense state (dense · bytes_per_param, divided by N when sharded) plus
 * its experts (ε_j · n_layers · n_experts / n_j, rounded up, at
 * expert · bytes_per_param each) within memory_gb. The minimum is found by
 * bisection on T: at a given T, expert work goes first to the types that
 * give up the least dense capacity for it (c_j / a_j below), and T is
 * feasible when the dense capacity left covers the batch.
 *
 * Then tokens/s = G / T; MFU and cost per token follow engine/balance/
 * cost.h with the mix's Σ peak and Σ price_per_hour. For comparison each
 * mix also gets T with the batch and the experts split equally over its
 * devices (no shares, no balancing). Not modelled: activation memory,
 * uneven expert load, the replicas split experts add to memory, overlap,
 * rows being whole sequences (taken as absorbed by expert work). */
#ifndef MOECTL_ENGINE_STEP_MODEL_H
#define MOECTL_ENGINE_STEP_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/balance/cost.h"
#include "engine/config/config.h"
#include "engine/core/error.h"

/* Mixes are every subset of the device entries: 2^8 - 1 at most. */
enum { STEP_MODEL_MAX_MIX_ENTRIES = 8 };
enum { STEP_MODEL_MAX_RANKS = 1000000 };

/* One device entry's part in a mix; its devices are alike. */
typedef struct step_model_device {
    int entry;                    /* index in cluster.devices */
    double flops_per_s;           /* s_j: utilization · peak */
    double link_bytes_per_s;      /* b_j */
    double dense_share;           /* δ_j: of the batch, all its devices */
    double expert_share;          /* ε_j: of every layer's expert rows */
    double rows;                  /* sequences a device trains, δ_j B / n_j */
    double experts;               /* routed experts a device holds
                                     (fractional: a split) */
    int experts_min, experts_max; /* floor and ceiling of `experts` */
    double compute_s;             /* t_j's compute part */
    double exchange_s;            /* t_j's all-to-all part */
    double used_gb;               /* dense state + its experts (rounded up) */
} step_model_device;

/* A mix that cannot hold the model has fits 0 and NAN times. */
typedef struct step_model_mix {
    uint64_t mask; /* bit i: cluster.devices[i] takes part */
    int entries;
    int ranks;
    int fits;
    double need_gb;       /* per device with the experts spread evenly */
    double step_s;        /* T with the planned shares */
    double sync_s;        /* S */
    double equal_step_s;  /* T with rows and experts split equally */
    double tokens_per_s, mfu, price_per_hour, peak_flops, cost_per_mtok;
    double budget_days;   /* plan.token_budget / tokens_per_s, in days */
    /* Σ over its device types of each type alone (at its count): what the
     * devices add up to; NAN when a type alone does not fit. pooling is
     * tokens_per_s over it. */
    double members_tokens_per_s, pooling;
    step_model_device use[CONFIG_MAX_DEVICES]; /* (entries) */
} step_model_mix;

typedef struct step_model {
    const config *cfg;
    cost_params params;
    double tokens_per_step; /* G */
    double expert_bytes;    /* one routed expert's training state */
    double dense_work, expert_work, exchange_bytes; /* W_d, W_e, V */
    step_model_mix cluster; /* every device entry */
    /* Every non-empty mix, fitting ones first, cheapest first; none when
     * there are more than STEP_MODEL_MAX_MIX_ENTRIES entries. */
    int mix_count;
    step_model_mix *mixes; /* (mix_count) */
} step_model;

/* Whether cfg states what the model needs: a device, each with a
 * utilization, and at most STEP_MODEL_MAX_RANKS of them. Returns 0, or -1
 * with a one-line reason (starting with cfg->source) in err. */
int step_model_check(const config *cfg, moe_error *err);

/* Evaluates cfg's cluster and every mix. Returns 0, or -1 with the reason
 * in err (step_model_check's, or out of memory). m keeps cfg. */
int step_model_init(step_model *m, const config *cfg, moe_error *err);
/* Frees the mixes; also safe after a failed init. */
void step_model_finish(step_model *m);

/* cluster.devices[entry]'s name, or "devices[N]" (in buf) without one. */
const char *step_model_device_name(const config *cfg, int entry, char *buf,
                                   size_t size);

/* cluster.devices[entry]'s link in bytes/s: its link_gbps, or the
 * cluster's. */
double step_model_link_bytes_per_s(const config *cfg, int entry);

#endif
