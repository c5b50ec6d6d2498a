/* Run configuration: YAML read with libyaml's document API through a schema
 * table (netplan style). Unknown keys, wrong types and out-of-range values
 * are errors that read `file:line:col: message`, then the source line and a
 * caret under the column. */
#ifndef MOECTL_ENGINE_CONFIG_H
#define MOECTL_ENGINE_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "engine/core/error.h"

#define CONFIG_MAX_DEVICES 64
#define CONFIG_NAME_MAX 64
#define CONFIG_PATH_MAX 512

/* The model reads bytes: the vocabulary is fixed. */
#define CONFIG_VOCAB_SIZE 256

typedef enum config_backend {
    CONFIG_BACKEND_CPU,
    CONFIG_BACKEND_CUDA,
    CONFIG_BACKEND_HIP,
} config_backend;

/* GEMM precision on a GPU: fp32, or tensor cores with fp32 in, out and
 * accumulation but products of inputs rounded to TF32 (10-bit mantissa)
 * or bf16 (7-bit mantissa). CPU devices compute in fp32 either way. The
 * values are kernels/cuda/gpu_backend.h's GPU_PRECISION_*. */
typedef enum config_precision {
    CONFIG_PRECISION_FP32,
    CONFIG_PRECISION_TF32,
    CONFIG_PRECISION_BF16,
} config_precision;

typedef struct config_device {
    char name[CONFIG_NAME_MAX];
    config_backend backend;
    int index;             /* device index within its backend */
    int threads;           /* CPU threads for this rank (BLAS and loops) */
    config_precision precision; /* GPU GEMMs */
    double price_per_hour; /* in cluster.currency */
    double peak_tflops;    /* dense fp32/bf16 peak used for MFU */
    double memory_gb;
    double slowdown;       /* >= 1: emulate a slower device (labelled) */
    double batch_share;    /* > 0: this rank's weight in the split of
                              train.batch_size over the ranks */
    int count;             /* identical devices this entry stands for; a
                              training run lists one entry per rank, so
                              count > 1 is for `moectl plan` */
    double utilization;    /* expected fraction of peak_tflops reached on
                              this workload, for `moectl plan`; 0: not
                              stated */
    double link_gbps;      /* GB/s each way of this device's link, for
                              `moectl plan`; 0: cluster.link_gbps */
} config_device;

typedef enum config_policy {
    CONFIG_POLICY_OFF,     /* placement changes only by hand */
    CONFIG_POLICY_SUGGEST, /* plan every N steps; the operator applies */
    CONFIG_POLICY_AUTO,    /* apply the plan when its gain is worth it */
} config_policy;

typedef enum config_dense {
    CONFIG_DENSE_REPLICATED, /* every rank holds all dense state (moectl) */
    CONFIG_DENSE_SHARDED,    /* dense state divided over ranks (ZeRO-3) */
} config_dense;

/* One name table per enum, indexed by its values and NULL-terminated:
 * the config, the command grammar, the records and the console all spell
 * them from here. */
extern const char *const config_backend_names[];
extern const char *const config_precision_names[];
extern const char *const config_policy_names[];
extern const char *const config_dense_names[];
/* The value whose name is the n bytes at word, or -1. */
int config_enum_lookup(const char *const *names, const char *word, size_t n);

/* train.spike_guard: see engine/model/spike_guard.h. */
enum { CONFIG_SPIKE_WINDOW_MAX = 256, CONFIG_SPIKE_RECENT_MAX = 64 };
typedef struct config_spike_guard {
    int window;           /* applied steps in the running medians; 0: off */
    int min_steps;        /* applied steps before the guard judges */
    double loss_factor;   /* a loss over factor x median is a spike */
    double grad_factor;   /* likewise the gradient norm */
    int lower_after;      /* spikes within window steps that lower the lr */
    double lr_factor;     /* the lowered lr: lr x lr_factor */
    int lower_steps;      /* ... for this many steps */
    int rollback_after;   /* spikes in a row that roll back; 0: never */
    int max_rollbacks;    /* then the run stops (exit 1) */
    int requeue_after;    /* a skipped batch trains this many steps on */
} config_spike_guard;

typedef struct config {
    char name[CONFIG_NAME_MAX];   /* file name without directory and .yaml */
    char source[CONFIG_PATH_MAX]; /* path as given, or "<embedded default>" */

    struct {
        char currency[16];
        int device_count;
        config_device devices[CONFIG_MAX_DEVICES];
        /* The rank of each routed expert: "" for round-robin, or groups of
         * n_experts ranks separated by ';', one group for every layer or
         * one per layer, e.g. "0 0 1 1" or "0 1 0 1; 1 0 1 0". */
        char placement[4096];
        double link_gbps;  /* GB/s between ranks: prices expert moves */
    } cluster;

    struct {
        int d_model;
        int n_layers;
        int n_heads;
        int seq_len;
        double rope_theta;
        double norm_eps;
        double init_std;
        int n_kv_heads;    /* key/value heads (grouped-query attention);
                              0: n_heads. Training needs n_heads. */
        int vocab_size;    /* training reads bytes (256); other values
                              describe models for `moectl plan` */
    } model;

    struct {
        int n_experts;
        int top_k;
        int n_shared;          /* always-on shared experts */
        int expert_hidden;     /* SwiGLU width of each expert */
        double capacity_factor; /* 0: dropless */
        double aux_loss_coef;  /* Switch auxiliary loss α */
        double z_loss_coef;    /* router z-loss coefficient */
    } moe;

    /* Routing-side and placement-side balancing. */
    struct {
        double bias_update_rate; /* DeepSeek-V3 aux-free bias step u; 0: off */
        int routing_warmup_steps; /* Ling stochastic routing warm-up; 0: off */
        double load_ema;         /* decay of the per-expert load average */
        config_policy policy;
        int every;               /* steps between plans (suggest, auto) */
        double min_gain;         /* auto applies a plan predicted to cut the
                                    step time by at least this fraction */
    } balance;

    struct {
        int steps;
        int batch_size;
        int warmup_steps;
        double lr;
        double min_lr;
        double beta1;
        double beta2;
        double eps;
        double weight_decay;
        double grad_clip;      /* 0: no clipping */
        uint64_t seed;
        int eval_every;        /* 0: no periodic validation */
        int eval_batches;
        int log_every;         /* progress lines when stderr is no terminal */
        config_spike_guard spike_guard;
        double collective_timeout; /* s; 0: max(60, 10 x median step) */
    } train;

    struct {
        char path[CONFIG_PATH_MAX];
        double val_fraction;
    } data;

    struct {
        char dir[CONFIG_PATH_MAX];
        int every;             /* 0: only at the end of the run */
        int keep;              /* newest checkpoints kept in dir */
    } checkpoint;

    /* The analytic model of `moectl plan`. */
    struct {
        double bytes_per_param; /* weights, gradients and optimizer state */
        config_dense dense;
        double exchange_bytes;  /* bytes an activation or gradient element
                                   takes on the wire */
        double token_budget;    /* tokens a run trains: time to it */
    } plan;

    /* How `moectl run` starts mpirun for several devices ("": not set). */
    struct {
        char hostfile[CONFIG_PATH_MAX];
        char mpirun_args[CONFIG_PATH_MAX]; /* extra words, space-separated */
    } launcher;
} config;

/* Sets every field to its default: the schema's defaults, which
 * configs/default.yaml states too. */
void config_defaults(config *cfg);

/* Loads defaults, then the YAML file at `path` (or, when path is NULL, the
 * embedded configs/default.yaml), then applies each `a.b=value` override
 * in `sets` in order, then checks cross-field constraints. On error, fills
 * err with the full multi-line message (location, source line, caret) and
 * returns -1; cfg is then unspecified. */
int config_load(config *cfg, const char *path, const char *const *sets,
                int set_count, moe_error *err);

/* Input caps, checked before parsing (libyaml takes minutes on deeply
 * nested input): a configuration file's bytes, and the nesting depth of
 * flow collections ([ and {) in a file or a --set value. */
enum { CONFIG_TEXT_MAX = 1 << 20, CONFIG_NESTING_MAX = 32 };

/* config_load, then what a run needs of the file system, checked without
 * creating anything: data.path a readable regular file (not a FIFO, not a
 * directory) long enough for seq_len and val_fraction, checkpoint.dir
 * creatable and writable, launcher.hostfile readable. Errors point at the
 * key where the file or an override set it. run and check both use it. */
int config_load_for_run(config *cfg, const char *path,
                        const char *const *sets, int set_count,
                        moe_error *err);

/* 0 when dir exists as a writable directory, or could be created (its
 * nearest existing ancestor is one); else -1 with the reason in why. */
int config_dir_writable(const char *dir, char *why, size_t why_size);

/* 0 when path is a readable regular file (its size in *size when not
 * NULL); else -1 with the reason (missing, a directory, a FIFO...). */
int config_regular_file(const char *path, long long *size, char *why,
                        size_t why_size);

/* Same, from text in memory; `source` names it in errors. */
int config_load_text(config *cfg, const char *source, const char *text,
                     size_t length, const char *const *sets, int set_count,
                     moe_error *err);

/* Fills placement (n_layers, n_experts) from cluster.placement and
 * returns 1, or returns 0 when it is empty (round-robin). On a malformed
 * value returns -1 with a one-line reason. */
int config_placement(const config *cfg, int *placement, char *reason,
                     size_t reason_size);

/* Writes the fully resolved configuration as YAML that config_load reads
 * back to the same values. */
void config_print(const config *cfg, FILE *out);

/* The reference of every key the schema accepts, generated from the
 * schema: full dotted key, type, range or choices, unit, default and
 * meaning (`moectl check --describe[=man]`). */
typedef enum config_describe_format {
    CONFIG_DESCRIBE_TEXT, /* one block per key, for a terminal */
    CONFIG_DESCRIBE_MAN,  /* roff: the whole page moectl-config(5) */
} config_describe_format;

/* Writes the reference to out. Returns 0, or -1 when writing failed. */
int config_describe(FILE *out, config_describe_format format);

/* The text of configs/default.yaml, embedded at build time. */
extern const char config_default_yaml[];
extern const size_t config_default_yaml_length;

#endif
