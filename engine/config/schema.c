/* The schema: one table per section, each key with its range, default,
 * unit and meaning, and the enum name tables. The document reader, the
 * --set overrides, the printer, the defaults and the reference all walk
 * these tables. */
#include "engine/config/config.h"

#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "engine/config/config_internal.h"

_Static_assert(sizeof(config_backend) == sizeof(int) &&
                   sizeof(config_precision) == sizeof(int),
               "FIELD_ENUM stores enums as int");

const char *const config_backend_names[] = {"cpu", "cuda", "hip", NULL};
const char *const config_policy_names[] = {"off", "suggest", "auto", NULL};
const char *const config_precision_names[] = {"fp32", "tf32", "bf16", NULL};
const char *const config_dense_names[] = {"replicated", "sharded", NULL};

int config_enum_lookup(const char *const *names, const char *word, size_t n)
{
    for (int i = 0; names[i]; i++)
        if (strlen(names[i]) == n && strncmp(names[i], word, n) == 0)
            return i;
    return -1;
}

#define DEV(member) offsetof(config_device, member)
#define STRING_MAX(type, member) ((double)sizeof(((type *)0)->member) - 1)

#define INT_FIELD(k, off, lo, hi, def, unit_name, text)                      \
    {.key = k, .kind = FIELD_INT, .offset = off, .min = lo, .max = hi,       \
     .default_number = def, .unit = unit_name, .about = text}
#define U64_FIELD(k, off, def, text)                                         \
    {.key = k, .kind = FIELD_U64, .offset = off, .default_number = def,      \
     .about = text}
#define REAL_FIELD(k, off, lo, hi, open_ends, def, unit_name, text)          \
    {.key = k, .kind = FIELD_DOUBLE, .offset = off, .min = lo, .max = hi,    \
     .open = open_ends, .default_number = def, .unit = unit_name,           \
     .about = text}
#define STRING_FIELD(k, off, max_length, def, text)                          \
    {.key = k, .kind = FIELD_STRING, .offset = off, .min = 1,                \
     .max = max_length, .default_text = def, .about = text}
/* A string that may be empty ("": not set). */
#define OPTIONAL_STRING_FIELD(k, off, max_length, text)                      \
    {.key = k, .kind = FIELD_STRING, .offset = off, .min = 0,                \
     .max = max_length, .default_text = "", .about = text}
#define ENUM_FIELD(k, off, value_names, def, text)                           \
    {.key = k, .kind = FIELD_ENUM, .offset = off, .names = value_names,      \
     .default_number = def, .about = text}
#define SECTION_FIELD(k, fields, text)                                       \
    {.key = k, .kind = FIELD_SECTION, .children = fields, .about = text}
#define END_FIELDS {.key = NULL}

/* The defaults are the run of configs/default.yaml (a unit test loads the
 * file and compares), plus keys that file leaves out. */

static const schema_field device_fields[] = {
    STRING_FIELD("name", DEV(name), STRING_MAX(config_device, name), "cpu0",
                 "label of the device in metrics and the console"),
    ENUM_FIELD("backend", DEV(backend), config_backend_names,
               CONFIG_BACKEND_CPU,
               "cpu, cuda or hip: the backend of this rank (see GPU "
               "backends in README.md)"),
    INT_FIELD("index", DEV(index), 0, 1023, 0, NULL,
              "device index within its backend"),
    INT_FIELD("threads", DEV(threads), 1, 1024, 2, "threads",
              "CPU threads of this rank, for BLAS and the CPU kernels"),
    ENUM_FIELD("precision", DEV(precision), config_precision_names,
               CONFIG_PRECISION_FP32,
               "GEMMs: fp32, or inputs rounded to tf32 or bf16 with fp32 "
               "data and accumulation (GPU: tensor cores, needs cuBLAS; "
               "CPU: bf16 through oneDNN, tf32 refused); the router's "
               "logits stay fp32"),
    REAL_FIELD("price_per_hour", DEV(price_per_hour), 0, NO_MAX, 0, 0.10,
               "cluster.currency per hour", "price of the device"),
    REAL_FIELD("peak_tflops", DEV(peak_tflops), 0, NO_MAX, OPEN_MIN, 1.0,
               "TFLOP/s", "dense peak FLOP/s, for MFU"),
    REAL_FIELD("memory_gb", DEV(memory_gb), 0, NO_MAX, OPEN_MIN, 24, "GB",
               "memory capacity for the model state (dense state and the "
               "experts it holds, 16 bytes a parameter): the planner never "
               "fills a rank past it (counting the measured activations "
               "of the rows it gives the rank), a move or split past it is "
               "refused, and a starting placement past it does not start"),
    REAL_FIELD("slowdown", DEV(slowdown), 1, 1000, 0, 1.0, NULL,
               "emulates a slower device: after every stretch of its "
               "forward and backward compute it sleeps (slowdown - 1) "
               "times as long, so its all-to-all partners wait for it "
               "layer by layer (labelled emulated in metrics and the "
               "console); 1: full speed"),
    REAL_FIELD("batch_share", DEV(batch_share), 0, NO_MAX, OPEN_MIN, 1.0,
               NULL,
               "this rank's weight in the split of train.batch_size: it "
               "trains batch_size x share / (sum of shares) sequences a "
               "step (rounded by largest remainder, at least one); the "
               "loss and gradients are normalised over the global batch, "
               "so shares change speed, not the math"),
    INT_FIELD("count", DEV(count), 1, 1000000, 1, "devices",
              "identical devices the entry stands for; moectl plan only "
              "(a training run lists one entry per rank)"),
    REAL_FIELD("utilization", DEV(utilization), 0, 1, 0, 0, NULL,
               "expected fraction of peak_tflops its compute reaches on "
               "this workload, for moectl plan (which models communication "
               "apart); 0: not stated"),
    REAL_FIELD("link_gbps", DEV(link_gbps), 0, NO_MAX, 0, 0, "GB/s",
               "bandwidth of the device's link each way, for moectl "
               "plan's all-to-all and gradient all-reduce (an assumption "
               "unless measured); 0: cluster.link_gbps"),
    END_FIELDS,
};

static const schema_field cluster_fields[] = {
    STRING_FIELD("currency", CFG(cluster.currency),
                 STRING_MAX(config, cluster.currency), "USD",
                 "currency of the device prices"),
    {.key = "devices", .kind = FIELD_SEQUENCE, .offset = CFG(cluster.devices),
     .min = 1, .max = CONFIG_MAX_DEVICES, .children = device_fields,
     .count_offset = CFG(cluster.device_count),
     .item_size = sizeof(config_device), .default_number = 1,
     .about = "one entry per rank, each a mapping of the keys below"},
    OPTIONAL_STRING_FIELD("placement", CFG(cluster.placement),
                          STRING_MAX(config, cluster.placement),
                          "the rank of each routed expert. Empty means "
                          "round-robin. Otherwise groups of moe.n_experts "
                          "ranks separated by ';': one group for every "
                          "layer (\"0 0 1 1\"), or one per layer "
                          "(\"0 1 0 1; 1 0 1 0\")"),
    REAL_FIELD("link_gbps", CFG(cluster.link_gbps), 0, NO_MAX, OPEN_MIN, 10,
               "GB/s",
               "bandwidth between ranks: prices an expert move in the "
               "planner"),
    END_FIELDS,
};

static const schema_field model_fields[] = {
    INT_FIELD("d_model", CFG(model.d_model), 8, 16384, 128, NULL,
              "width of the residual stream"),
    INT_FIELD("n_layers", CFG(model.n_layers), 1, 256, 4, NULL, "layers"),
    INT_FIELD("n_heads", CFG(model.n_heads), 1, 256, 4, NULL,
              "attention heads; the head size d_model / n_heads must be "
              "even, for RoPE"),
    INT_FIELD("seq_len", CFG(model.seq_len), 2, 65536, 128, "tokens",
              "tokens (bytes) per sequence"),
    REAL_FIELD("rope_theta", CFG(model.rope_theta), 0, NO_MAX, OPEN_MIN,
               10000, NULL, "RoPE base"),
    REAL_FIELD("norm_eps", CFG(model.norm_eps), 0, 1, OPEN_MIN, 1e-5, NULL,
               "RMSNorm epsilon"),
    REAL_FIELD("init_std", CFG(model.init_std), 0, 1, OPEN_MIN, 0.02, NULL,
               "standard deviation of the initial weights; residual "
               "projections use init_std / sqrt(2 n_layers)"),
    INT_FIELD("n_kv_heads", CFG(model.n_kv_heads), 0, 256, 0, NULL,
              "key/value heads (grouped-query attention); 0: n_heads. "
              "Training needs n_heads; other values describe models for "
              "moectl plan"),
    INT_FIELD("vocab_size", CFG(model.vocab_size), 2, 16777216,
              CONFIG_VOCAB_SIZE, "tokens",
              "the trainer reads bytes (256); other values describe models "
              "for moectl plan"),
    END_FIELDS,
};

static const schema_field moe_fields[] = {
    INT_FIELD("n_experts", CFG(moe.n_experts), 1, 1024, 8, "experts",
              "routed experts per layer"),
    INT_FIELD("top_k", CFG(moe.top_k), 1, 1024, 2, "experts",
              "experts per token"),
    INT_FIELD("n_shared", CFG(moe.n_shared), 0, 16, 1, "experts",
              "always-on shared experts"),
    INT_FIELD("expert_hidden", CFG(moe.expert_hidden), 1, 65536, 256, NULL,
              "SwiGLU width of each expert"),
    REAL_FIELD("capacity_factor", CFG(moe.capacity_factor), 0, NO_MAX, 0, 0,
               NULL,
               "0 is dropless; otherwise each expert keeps "
               "ceil(cf * N * k / E) tokens, in token order"),
    REAL_FIELD("aux_loss_coef", CFG(moe.aux_loss_coef), 0, NO_MAX, 0, 0.01,
               NULL,
               "alpha of the Switch auxiliary loss "
               "alpha * E * sum(f_i * P_i)"),
    REAL_FIELD("z_loss_coef", CFG(moe.z_loss_coef), 0, NO_MAX, 0, 1e-4, NULL,
               "coefficient of the router z-loss "
               "mean(logsumexp(logits)^2)"),
    END_FIELDS,
};

static const schema_field balance_fields[] = {
    REAL_FIELD("bias_update_rate", CFG(balance.bias_update_rate), 0, 1, 0, 0,
               NULL,
               "u of DeepSeek-V3's auxiliary-loss-free balancing: top-k "
               "selects on probs + b, gate weights stay unbiased, and after "
               "each step b_i += u * sign(mean load - load_i); 0: off"),
    INT_FIELD("routing_warmup_steps", CFG(balance.routing_warmup_steps), 0,
              1000000000, 0, "steps",
              "W of Ling's stochastic routing warm-up: at step s <= W the "
              "top-k selects on w * logits + (1 - w) * noise, "
              "w = (s - 1) / W, noise ~ N(mu, sigma) of the layer's running "
              "logit statistics; 0: off"),
    REAL_FIELD("load_ema", CFG(balance.load_ema), 0, 1, OPEN_MAX, 0.9, NULL,
               "decay of the moving average of expert load the planner "
               "reads (rank speeds and dense times are medians of the "
               "latest min(balance.every, 256) steps)"),
    ENUM_FIELD("policy", CFG(balance.policy), config_policy_names,
               CONFIG_POLICY_OFF,
               "off (placement changes only by hand), suggest (plan every "
               "balance.every steps; the operator applies) or auto (apply "
               "a plan when its predicted gain >= balance.min_gain)"),
    INT_FIELD("every", CFG(balance.every), 1, 1000000000, 50, "steps",
              "steps between plans (suggest, auto)"),
    REAL_FIELD("min_gain", CFG(balance.min_gain), 0, 1, OPEN_MAX, 0.05,
               "fraction of a step",
               "step time a plan must save for auto to apply it"),
    END_FIELDS,
};

static const schema_field plan_fields[] = {
    REAL_FIELD("bytes_per_param", CFG(plan.bytes_per_param), 0, 1024,
               OPEN_MIN, 16, "bytes",
               "weights, gradients and optimizer state per parameter, for "
               "moectl plan's memory check"),
    ENUM_FIELD("dense", CFG(plan.dense), config_dense_names,
               CONFIG_DENSE_REPLICATED,
               "replicated (every rank holds all dense state, as the "
               "trainer does) or sharded (divided over ranks, ZeRO-3 "
               "style), for moectl plan"),
    REAL_FIELD("exchange_bytes", CFG(plan.exchange_bytes), 0, 64, OPEN_MIN,
               2, "bytes",
               "size on the wire of an exchanged activation or gradient "
               "element (2: bf16), for moectl plan's communication"),
    REAL_FIELD("token_budget", CFG(plan.token_budget), 0, NO_MAX, OPEN_MIN,
               1e12, "tokens",
               "tokens a training run is to see: moectl plan ranks mixes "
               "by the time to it as well as by cost"),
    END_FIELDS,
};

static const schema_field spike_guard_fields[] = {
    INT_FIELD("window", CFG(train.spike_guard.window), 0,
              CONFIG_SPIKE_WINDOW_MAX, 50, "steps",
              "applied steps whose median loss and gradient norm a step is "
              "judged against; 0: the guard is off"),
    INT_FIELD("min_steps", CFG(train.spike_guard.min_steps), 1,
              CONFIG_SPIKE_WINDOW_MAX, 20, "steps",
              "applied steps before the guard judges (a non-finite loss or "
              "gradient norm is a spike from the first step)"),
    REAL_FIELD("loss_factor", CFG(train.spike_guard.loss_factor), 1, NO_MAX,
               OPEN_MIN, 1.5, NULL,
               "a step whose loss is over this factor of the median is a "
               "spike: not applied, its batch trained again later"),
    REAL_FIELD("grad_factor", CFG(train.spike_guard.grad_factor), 1, NO_MAX,
               OPEN_MIN, 10.0, NULL,
               "likewise for the gradient norm (before clipping)"),
    INT_FIELD("requeue_after", CFG(train.spike_guard.requeue_after), 1,
              INT_MAX, 100, "steps",
              "a skipped batch trains again this many steps later (once; "
              "at most 16 wait at a time)"),
    INT_FIELD("lower_after", CFG(train.spike_guard.lower_after), 0,
              CONFIG_SPIKE_RECENT_MAX, 3, "spikes",
              "this many spikes within window steps lower the learning "
              "rate; 0: never"),
    REAL_FIELD("lr_factor", CFG(train.spike_guard.lr_factor), 0, 1,
               OPEN_MIN | OPEN_MAX, 0.5, NULL,
               "the lowered learning rate is the schedule's times this"),
    INT_FIELD("lower_steps", CFG(train.spike_guard.lower_steps), 1, INT_MAX,
              200, "steps", "how long the learning rate stays lowered"),
    INT_FIELD("rollback_after", CFG(train.spike_guard.rollback_after), 0,
              INT_MAX, 5, "spikes",
              "this many spikes in a row roll back to the newest "
              "checkpoint, which continues with another data order; 0: "
              "never"),
    INT_FIELD("max_rollbacks", CFG(train.spike_guard.max_rollbacks), 0,
              INT_MAX, 3, "roll backs",
              "one more persistent spike stops the run (exit 1), the "
              "newest checkpoint kept"),
    END_FIELDS,
};

static const schema_field train_fields[] = {
    INT_FIELD("steps", CFG(train.steps), 1, 1000000000, 2000, "steps",
              "length of the run and of the learning-rate schedule"),
    INT_FIELD("batch_size", CFG(train.batch_size), 1, 65536, 16, "sequences",
              "sequences per step"),
    INT_FIELD("warmup_steps", CFG(train.warmup_steps), 0, 1000000000, 100,
              "steps",
              "linear learning-rate warm-up, then cosine decay to "
              "train.min_lr"),
    REAL_FIELD("lr", CFG(train.lr), 0, 1, OPEN_MIN, 3e-3, NULL,
               "peak learning rate"),
    REAL_FIELD("min_lr", CFG(train.min_lr), 0, 1, 0, 3e-4, NULL,
               "final learning rate"),
    REAL_FIELD("beta1", CFG(train.beta1), 0, 1, OPEN_MAX, 0.9, NULL,
               "AdamW first-moment decay"),
    REAL_FIELD("beta2", CFG(train.beta2), 0, 1, OPEN_MAX, 0.95, NULL,
               "AdamW second-moment decay"),
    REAL_FIELD("eps", CFG(train.eps), 0, 1, OPEN_MIN, 1e-8, NULL,
               "AdamW epsilon"),
    REAL_FIELD("weight_decay", CFG(train.weight_decay), 0, NO_MAX, 0, 0.1,
               NULL, "decoupled weight decay; matrices only, not norm gains"),
    REAL_FIELD("grad_clip", CFG(train.grad_clip), 0, NO_MAX, 0, 1.0, NULL,
               "global gradient-norm clip; 0: no clipping"),
    U64_FIELD("seed", CFG(train.seed), 1337, "fixes every random choice"),
    INT_FIELD("eval_every", CFG(train.eval_every), 0, INT_MAX, 250, "steps",
              "validation interval; 0: no periodic validation"),
    INT_FIELD("eval_batches", CFG(train.eval_batches), 1, INT_MAX, 16,
              "batches", "validation batches (fixed windows)"),
    INT_FIELD("log_every", CFG(train.log_every), 1, INT_MAX, 50, "steps",
              "progress-line interval when stderr is no terminal"),
    REAL_FIELD("collective_timeout", CFG(train.collective_timeout), 0,
               NO_MAX, 0, 0, "s",
               "the hung-rank watchdog: a collective of a multi-rank job "
               "that waits longer stops the job (exit 1), naming the ranks "
               "that did not arrive; 0: 10 x the median step, at least 60 "
               "s (600 s until a step is measured)"),
    SECTION_FIELD("spike_guard", spike_guard_fields,
                  "The loss-spike guard: skips a step whose loss or "
                  "gradient norm jumps, lowers the learning rate when "
                  "spikes repeat, rolls back when they persist."),
    END_FIELDS,
};

static const schema_field data_fields[] = {
    STRING_FIELD("path", CFG(data.path), STRING_MAX(config, data.path),
                 "data/kjv.txt",
                 "the training text: any file, the model reads bytes; a "
                 "relative path resolves against the current directory"),
    REAL_FIELD("val_fraction", CFG(data.val_fraction), 0, 1,
               OPEN_MIN | OPEN_MAX, 0.05, NULL,
               "the held-out tail of the file, for validation"),
    END_FIELDS,
};

static const schema_field checkpoint_fields[] = {
    OPTIONAL_STRING_FIELD("dir", CFG(checkpoint.dir),
                 STRING_MAX(config, checkpoint.dir),
                 "where checkpoints go; empty: the run directory's "
                 "checkpoints/ (runs/NAME/checkpoints), so that rotation "
                 "and --resume stay within one run; a relative path "
                 "resolves against the current directory"),
    INT_FIELD("every", CFG(checkpoint.every), 0, INT_MAX, 500, "steps",
              "checkpoint interval; 0: only at the end of the run"),
    INT_FIELD("keep", CFG(checkpoint.keep), 1, 1000, 3, "checkpoints",
              "newest checkpoints kept in checkpoint.dir"),
    END_FIELDS,
};

static const schema_field launcher_fields[] = {
    OPTIONAL_STRING_FIELD("hostfile", CFG(launcher.hostfile),
                          STRING_MAX(config, launcher.hostfile),
                          "passed to mpirun as --hostfile when set"),
    OPTIONAL_STRING_FIELD("mpirun_args", CFG(launcher.mpirun_args),
                          STRING_MAX(config, launcher.mpirun_args),
                          "extra mpirun words, space-separated (e.g. "
                          "--mca btl self,vader)"),
    END_FIELDS,
};

const schema_field schema_root_fields[] = {
    SECTION_FIELD("cluster", cluster_fields,
                  "The devices of the job, one per rank, their prices and "
                  "the links between them."),
    SECTION_FIELD("model", model_fields,
                  "The decoder-only language model over bytes."),
    SECTION_FIELD("moe", moe_fields,
                  "The mixture-of-experts feed-forward of every layer."),
    SECTION_FIELD("balance", balance_fields,
                  "Routing-side and placement-side balancing."),
    SECTION_FIELD("train", train_fields,
                  "AdamW, its schedule, validation and progress lines."),
    SECTION_FIELD("data", data_fields, "The training text."),
    SECTION_FIELD("checkpoint", checkpoint_fields, "Checkpoint files."),
    SECTION_FIELD("plan", plan_fields, "The analytic model of moectl plan."),
    SECTION_FIELD("launcher", launcher_fields,
                  "How moectl run starts mpirun for several devices (\"\": "
                  "not set)."),
    END_FIELDS,
};

static void set_default(const schema_field *f, unsigned char *base)
{
    unsigned char *field = base + f->offset;
    switch (f->kind) {
    case FIELD_INT:
    case FIELD_ENUM: {
        int v = (int)f->default_number;
        memcpy(field, &v, sizeof v);
        break;
    }
    case FIELD_U64: {
        uint64_t v = (uint64_t)f->default_number;
        memcpy(field, &v, sizeof v);
        break;
    }
    case FIELD_DOUBLE:
        memcpy(field, &f->default_number, sizeof f->default_number);
        break;
    case FIELD_STRING:
        memset(field, 0, (size_t)f->max + 1);
        if (f->default_text)
            memcpy(field, f->default_text, strlen(f->default_text));
        break;
    case FIELD_SECTION:
        schema_set_defaults(f->children, base);
        break;
    case FIELD_SEQUENCE: {
        int count = (int)f->default_number;
        memcpy(base + f->count_offset, &count, sizeof count);
        for (int i = 0; i < count; i++)
            schema_set_defaults(f->children, field + (size_t)i * f->item_size);
        break;
    }
    }
}

void schema_set_defaults(const schema_field *fields, unsigned char *base)
{
    for (const schema_field *f = fields; f->key; f++)
        set_default(f, base);
}

void config_defaults(config *cfg)
{
    /* Zeroed first so that padding and unused bytes compare with memcmp. */
    memset(cfg, 0, sizeof *cfg);
    strcpy(cfg->name, "default");
    strcpy(cfg->source, "<defaults>");
    schema_set_defaults(schema_root_fields, (unsigned char *)cfg);
}

void schema_list_keys(const schema_field *fields, char *buf, size_t size)
{
    size_t k = 0;
    buf[0] = '\0';
    for (const schema_field *f = fields; f->key && k < size; f++)
        k += (size_t)snprintf(buf + k, size - k, "%s%s",
                              f == fields ? "" : ", ", f->key);
}

const schema_field *schema_find_field(const schema_field *fields,
                                      const char *key, size_t length)
{
    for (const schema_field *f = fields; f->key; f++)
        if (strlen(f->key) == length && memcmp(f->key, key, length) == 0)
            return f;
    return NULL;
}

void schema_format_path(char *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, PATH_LEN, fmt, ap);
    va_end(ap);
}

void schema_join_path(char *out, const char *path, const char *key)
{
    schema_format_path(out, "%s%s%s", path, path[0] ? "." : "", key);
}
