/* The schema: one table per section, the enum name tables and the
 * defaults; walked by the document reader, the --set overrides and the
 * printer. */
#include "engine/config/config_internal.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

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

static const schema_field device_fields[] = {
    STRING_FIELD("name",           DEV(name), STRING_MAX(config_device, name)),
    ENUM_FIELD("backend",          DEV(backend), config_backend_names),
    INT_FIELD("index",             DEV(index), 0, 1023),
    INT_FIELD("threads",           DEV(threads), 1, 1024),
    ENUM_FIELD("precision",        DEV(precision), config_precision_names),
    REAL_FIELD("price_per_hour",   DEV(price_per_hour), 0, NO_MAX, 0),
    REAL_FIELD("peak_tflops",      DEV(peak_tflops), 0, NO_MAX, OPEN_MIN),
    REAL_FIELD("memory_gb",        DEV(memory_gb), 0, NO_MAX, OPEN_MIN),
    REAL_FIELD("slowdown",         DEV(slowdown), 1, 1000, 0),
    INT_FIELD("count",             DEV(count), 1, 1000000),
    REAL_FIELD("utilization",      DEV(utilization), 0, 1, 0),
    END_FIELDS,
};

static void device_init(void *item);

static const schema_field cluster_fields[] = {
    STRING_FIELD("currency", CFG(cluster.currency),
                 STRING_MAX(config, cluster.currency)),
    {.key = "devices", .kind = FIELD_SEQUENCE, .offset = CFG(cluster.devices),
     .min = 1, .max = CONFIG_MAX_DEVICES, .children = device_fields,
     .count_offset = CFG(cluster.device_count),
     .item_size = sizeof(config_device), .item_init = device_init},
    OPTIONAL_STRING_FIELD("placement", CFG(cluster.placement),
                          STRING_MAX(config, cluster.placement)),
    REAL_FIELD("link_gbps", CFG(cluster.link_gbps), 0, NO_MAX, OPEN_MIN),
    END_FIELDS,
};

static const schema_field model_fields[] = {
    INT_FIELD("d_model",     CFG(model.d_model), 8, 16384),
    INT_FIELD("n_layers",    CFG(model.n_layers), 1, 256),
    INT_FIELD("n_heads",     CFG(model.n_heads), 1, 256),
    INT_FIELD("seq_len",     CFG(model.seq_len), 2, 65536),
    REAL_FIELD("rope_theta", CFG(model.rope_theta), 0, NO_MAX, OPEN_MIN),
    REAL_FIELD("norm_eps",   CFG(model.norm_eps), 0, 1, OPEN_MIN),
    REAL_FIELD("init_std",   CFG(model.init_std), 0, 1, OPEN_MIN),
    INT_FIELD("n_kv_heads",  CFG(model.n_kv_heads), 0, 256),
    INT_FIELD("vocab_size",  CFG(model.vocab_size), 2, 16777216),
    END_FIELDS,
};

static const schema_field moe_fields[] = {
    INT_FIELD("n_experts",        CFG(moe.n_experts), 1, 1024),
    INT_FIELD("top_k",            CFG(moe.top_k), 1, 1024),
    INT_FIELD("n_shared",         CFG(moe.n_shared), 0, 16),
    INT_FIELD("expert_hidden",    CFG(moe.expert_hidden), 1, 65536),
    REAL_FIELD("capacity_factor", CFG(moe.capacity_factor), 0, NO_MAX, 0),
    REAL_FIELD("aux_loss_coef",   CFG(moe.aux_loss_coef), 0, NO_MAX, 0),
    REAL_FIELD("z_loss_coef",     CFG(moe.z_loss_coef), 0, NO_MAX, 0),
    END_FIELDS,
};

static const schema_field balance_fields[] = {
    REAL_FIELD("bias_update_rate",    CFG(balance.bias_update_rate), 0, 1, 0),
    INT_FIELD("routing_warmup_steps", CFG(balance.routing_warmup_steps), 0,
              1000000000),
    REAL_FIELD("load_ema",            CFG(balance.load_ema), 0, 1, OPEN_MAX),
    ENUM_FIELD("policy",              CFG(balance.policy), config_policy_names),
    INT_FIELD("every",                CFG(balance.every), 1, 1000000000),
    REAL_FIELD("min_gain",            CFG(balance.min_gain), 0, 1, OPEN_MAX),
    END_FIELDS,
};

static const schema_field plan_fields[] = {
    REAL_FIELD("bytes_per_param", CFG(plan.bytes_per_param), 0, 1024,
               OPEN_MIN),
    ENUM_FIELD("dense",           CFG(plan.dense), config_dense_names),
    END_FIELDS,
};

static const schema_field train_fields[] = {
    INT_FIELD("steps",         CFG(train.steps), 1, 1000000000),
    INT_FIELD("batch_size",    CFG(train.batch_size), 1, 65536),
    INT_FIELD("warmup_steps",  CFG(train.warmup_steps), 0, 1000000000),
    REAL_FIELD("lr",           CFG(train.lr), 0, 1, OPEN_MIN),
    REAL_FIELD("min_lr",       CFG(train.min_lr), 0, 1, 0),
    REAL_FIELD("beta1",        CFG(train.beta1), 0, 1, OPEN_MAX),
    REAL_FIELD("beta2",        CFG(train.beta2), 0, 1, OPEN_MAX),
    REAL_FIELD("eps",          CFG(train.eps), 0, 1, OPEN_MIN),
    REAL_FIELD("weight_decay", CFG(train.weight_decay), 0, NO_MAX, 0),
    REAL_FIELD("grad_clip",    CFG(train.grad_clip), 0, NO_MAX, 0),
    U64_FIELD("seed",          CFG(train.seed)),
    INT_FIELD("eval_every",    CFG(train.eval_every), 0, INT_MAX),
    INT_FIELD("eval_batches",  CFG(train.eval_batches), 1, INT_MAX),
    INT_FIELD("log_every",     CFG(train.log_every), 1, INT_MAX),
    END_FIELDS,
};

static const schema_field data_fields[] = {
    STRING_FIELD("path",       CFG(data.path), STRING_MAX(config, data.path)),
    REAL_FIELD("val_fraction", CFG(data.val_fraction), 0, 1,
               OPEN_MIN | OPEN_MAX),
    END_FIELDS,
};

static const schema_field checkpoint_fields[] = {
    STRING_FIELD("dir", CFG(checkpoint.dir),
                 STRING_MAX(config, checkpoint.dir)),
    INT_FIELD("every",  CFG(checkpoint.every), 0, INT_MAX),
    INT_FIELD("keep",   CFG(checkpoint.keep), 1, 1000),
    END_FIELDS,
};

static const schema_field launcher_fields[] = {
    OPTIONAL_STRING_FIELD("hostfile", CFG(launcher.hostfile),
                          STRING_MAX(config, launcher.hostfile)),
    OPTIONAL_STRING_FIELD("mpirun_args", CFG(launcher.mpirun_args),
                          STRING_MAX(config, launcher.mpirun_args)),
    END_FIELDS,
};

const schema_field schema_root_fields[] = {
    SECTION_FIELD("cluster",    cluster_fields),
    SECTION_FIELD("model",      model_fields),
    SECTION_FIELD("moe",        moe_fields),
    SECTION_FIELD("balance",    balance_fields),
    SECTION_FIELD("train",      train_fields),
    SECTION_FIELD("data",       data_fields),
    SECTION_FIELD("checkpoint", checkpoint_fields),
    SECTION_FIELD("plan",       plan_fields),
    SECTION_FIELD("launcher",   launcher_fields),
    END_FIELDS,
};

/* Defaults: kept equal to configs/default.yaml (a unit test checks). */

static void device_init(void *item)
{
    config_device *device = item;
    memset(device, 0, sizeof *device);
    strcpy(device->name, "cpu0");
    device->backend = CONFIG_BACKEND_CPU;
    device->index = 0;
    device->threads = 2;
    device->price_per_hour = 0.10;
    device->peak_tflops = 1.0;
    device->memory_gb = 24;
    device->slowdown = 1.0;
    device->count = 1;
    device->utilization = 0;
}

void config_defaults(config *cfg)
{
    /* Zeroed first so that padding and unused bytes compare with memcmp. */
    memset(cfg, 0, sizeof *cfg);
    strcpy(cfg->name, "default");
    strcpy(cfg->source, "<defaults>");

    strcpy(cfg->cluster.currency, "USD");
    cfg->cluster.device_count = 1;
    cfg->cluster.link_gbps = 10;
    device_init(&cfg->cluster.devices[0]);

    cfg->model.d_model = 128;
    cfg->model.n_layers = 4;
    cfg->model.n_heads = 4;
    cfg->model.seq_len = 128;
    cfg->model.rope_theta = 10000;
    cfg->model.norm_eps = 1e-5;
    cfg->model.init_std = 0.02;
    cfg->model.n_kv_heads = 0;
    cfg->model.vocab_size = CONFIG_VOCAB_SIZE;

    cfg->moe.n_experts = 8;
    cfg->moe.top_k = 2;
    cfg->moe.n_shared = 1;
    cfg->moe.expert_hidden = 256;
    cfg->moe.capacity_factor = 0;
    cfg->moe.aux_loss_coef = 0.01;
    cfg->moe.z_loss_coef = 1e-4;

    cfg->balance.bias_update_rate = 0;
    cfg->balance.routing_warmup_steps = 0;
    cfg->balance.load_ema = 0.9;
    cfg->balance.policy = CONFIG_POLICY_OFF;
    cfg->balance.every = 50;
    cfg->balance.min_gain = 0.05;

    cfg->plan.bytes_per_param = 16;
    cfg->plan.dense = CONFIG_DENSE_REPLICATED;

    cfg->train.steps = 2000;
    cfg->train.batch_size = 16;
    cfg->train.warmup_steps = 100;
    cfg->train.lr = 3e-3;
    cfg->train.min_lr = 3e-4;
    cfg->train.beta1 = 0.9;
    cfg->train.beta2 = 0.95;
    cfg->train.eps = 1e-8;
    cfg->train.weight_decay = 0.1;
    cfg->train.grad_clip = 1.0;
    cfg->train.seed = 1337;
    cfg->train.eval_every = 250;
    cfg->train.eval_batches = 16;
    cfg->train.log_every = 50;

    strcpy(cfg->data.path, "data/kjv.txt");
    cfg->data.val_fraction = 0.05;

    strcpy(cfg->checkpoint.dir, "runs/default");
    cfg->checkpoint.every = 500;
    cfg->checkpoint.keep = 3;
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
