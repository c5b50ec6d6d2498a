/* The analytic step model behind `moectl plan`: what a training step of a
 * configuration takes and costs on its cluster and on every mix of its
 * device types, without training (no MPI, no clock).
 *
 * A mix is a set of cluster.devices entries, each with its count; every
 * device is one rank. Rank r runs at s_r = utilization_r · peak_tflops_r ·
 * 1e12 FLOP/s, and a step trains G = train.batch_size · model.seq_len
 * tokens at COST_FLOP_PER_PARAM_TOKEN (6) FLOP per parameter and token:
 *
 * - Dense parameters are data-parallel, the batch split equally over the n
 *   ranks as the trainer splits it: base_s[r] = (G/n) · 6 · dense / s_r.
 * - Routed experts: every expert of a layer gets G · top_k / n_experts
 *   rows (uniform load); rank r runs them at s_r / (6 · expert) rows/s.
 * - Memory: a rank holds its dense state (dense · bytes_per_param, divided
 *   by n when plan.dense is sharded) and its experts (expert ·
 *   bytes_per_param each) within memory_gb.
 * - The placement planner (engine/balance/planner.h), the one the live
 *   balancer uses, starts from round-robin and places the experts within
 *   each rank's memory so as to minimise its step time T(P), computed by
 *   planner_step_time: the slowest rank's dense time plus, for each layer,
 *   the slowest rank's expert time (layers meet at the token all-to-all).
 *
 * Then tokens/s = G / T, and MFU and cost per token follow
 * engine/balance/cost.h with the mix's Σ peak and Σ price_per_hour. Not
 * modelled: communication, activation memory, load imbalance between
 * experts, expert replicas. */
#ifndef MOECTL_ENGINE_STEP_MODEL_H
#define MOECTL_ENGINE_STEP_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/balance/cost.h"
#include "engine/config/config.h"
#include "engine/core/error.h"

/* Mixes are every subset of the device entries: 2^8 - 1 at most. */
enum { STEP_MODEL_MAX_MIX_ENTRIES = 8 };
/* Beyond this the planner's work (ranks × experts) stops being instant. */
enum { STEP_MODEL_MAX_RANKS = 65536 };

/* One device entry's part in a mix; its ranks are alike but for the
 * experts the planner gives them. */
typedef struct step_model_device {
    int entry;                    /* index in cluster.devices */
    double flops_per_s;           /* s_r: utilization · peak */
    double dense_s;               /* base_s: its share of the dense work */
    double expert_rows_per_s;     /* the rate its routed experts run at */
    int experts_min, experts_max; /* routed experts on one of its ranks */
    double used_gb;               /* its fullest rank: dense state + experts */
} step_model_device;

/* A mix that cannot hold the model has fits 0 and NAN times. */
typedef struct step_model_mix {
    uint64_t mask; /* bit i: cluster.devices[i] takes part */
    int entries;
    int ranks;
    int fits;
    double need_gb;            /* per device with the experts spread evenly */
    double step_s;             /* with the planner's placement */
    double round_robin_step_s; /* with the starting placement */
    double tokens_per_s, mfu, price_per_hour, peak_flops, cost_per_mtok;
    step_model_device use[CONFIG_MAX_DEVICES]; /* (entries) */
} step_model_mix;

typedef struct step_model {
    const config *cfg;
    cost_params params;
    double tokens_per_step; /* G */
    double expert_bytes;    /* one routed expert's training state */
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

#endif
