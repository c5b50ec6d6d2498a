#include "engine/config/config.h"

#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <yaml.h>

/* ------------------------------------------------------------------------
 * Schema: one table per section, walked by one generic loader and printer.
 * ------------------------------------------------------------------------ */

typedef enum field_kind {
    FIELD_INT,      /* int in [min, max] */
    FIELD_U64,      /* uint64_t, full range */
    FIELD_DOUBLE,   /* finite double in [min, max]; ends may be open */
    FIELD_STRING,   /* char[max + 1]; length in bytes in [min, max] */
    FIELD_ENUM,     /* int-sized enum; the value is its index in names */
    FIELD_SECTION,  /* mapping of children; their offsets share our base */
    FIELD_SEQUENCE, /* sequence of mappings of children; [min, max] items,
                       max being the capacity of the array */
} field_kind;

#define OPEN_MIN 1u /* min itself is out of range */
#define OPEN_MAX 2u /* max itself is out of range */
#define NO_MAX DBL_MAX

typedef struct schema_field schema_field;
struct schema_field {
    const char *key;
    field_kind kind;
    size_t offset;              /* of the value within the walker's base */
    double min, max;
    unsigned open;              /* OPEN_MIN | OPEN_MAX */
    const char *const *names;   /* FIELD_ENUM: NULL-terminated */
    const schema_field *children; /* FIELD_SECTION, FIELD_SEQUENCE */
    size_t count_offset;        /* FIELD_SEQUENCE: int item count */
    size_t item_size;           /* FIELD_SEQUENCE */
    void (*item_init)(void *item); /* FIELD_SEQUENCE: defaults of one item */
};

#define CFG(member) offsetof(config, member)
#define DEV(member) offsetof(config_device, member)
#define STRING_MAX(type, member) ((double)sizeof(((type *)0)->member) - 1)

#define INT_FIELD(k, off, lo, hi)                                            \
    {.key = k, .kind = FIELD_INT, .offset = off, .min = lo, .max = hi}
#define U64_FIELD(k, off) {.key = k, .kind = FIELD_U64, .offset = off}
#define REAL_FIELD(k, off, lo, hi, open_ends)                                \
    {.key = k, .kind = FIELD_DOUBLE, .offset = off, .min = lo, .max = hi,   \
     .open = open_ends}
#define STRING_FIELD(k, off, max_length)                                     \
    {.key = k, .kind = FIELD_STRING, .offset = off, .min = 1,                \
     .max = max_length}
/* A string that may be empty ("": not set). */
#define OPTIONAL_STRING_FIELD(k, off, max_length)                            \
    {.key = k, .kind = FIELD_STRING, .offset = off, .min = 0,                \
     .max = max_length}
#define ENUM_FIELD(k, off, value_names)                                      \
    {.key = k, .kind = FIELD_ENUM, .offset = off, .names = value_names}
#define SECTION_FIELD(k, fields)                                             \
    {.key = k, .kind = FIELD_SECTION, .children = fields}
#define END_FIELDS {.key = NULL}

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

static const schema_field root_fields[] = {
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

/* ------------------------------------------------------------------------
 * Defaults: kept equal to configs/default.yaml (a unit test checks).
 * ------------------------------------------------------------------------ */

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

/* ------------------------------------------------------------------------
 * Load context and error reports.
 * ------------------------------------------------------------------------ */

/* A place in some input, 0-based as libyaml's marks; column in characters. */
typedef struct where {
    const char *source; /* file name, "<embedded default>" or "--set" */
    const char *text;   /* the whole input, for quoting the line */
    size_t length;
    size_t line, column;
} where;

#define PATH_LEN 96 /* "cluster.devices[63].price_per_hour" */

/* Where a top-level leaf was last set, for cross-field errors. */
typedef struct key_mark {
    size_t offset;  /* of the value within config */
    char path[PATH_LEN]; /* "model.n_heads" */
    where at;       /* of the key */
    unsigned long order;
} key_mark;

/* More than the top-level leaves of the schema (34). */
#define MARKS_MAX 64
#define SHOW_MAX 40    /* bytes of a value quoted in a message */
#define SHOW_BUF (SHOW_MAX + 16)
#define LINE_WINDOW 100 /* bytes of a long source line shown */

typedef struct load_ctx {
    config *cfg;
    moe_error *err;
    const char *source; /* the input being read now */
    const char *text;
    size_t length;
    key_mark marks[MARKS_MAX];
    int mark_count;
    unsigned long order;
} load_ctx;

static bool is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

static size_t utf8_chars(const char *s, size_t n)
{
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        count += !is_continuation((unsigned char)s[i]);
    return count;
}

/* Length of the well-formed UTF-8 sequence at s (1 for ASCII), or 0. */
static size_t utf8_sequence(const char *s, size_t available)
{
    unsigned char c = (unsigned char)s[0];
    size_t n = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2
             : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (n == 0 || n > available)
        return 0;
    for (size_t i = 1; i < n; i++)
        if (!is_continuation((unsigned char)s[i]))
            return 0;
    return n;
}

/* Byte range [*start, *end) of 0-based `line`; line breaks as libyaml's
 * (\n, \r\n, \r). A line past the end is empty. */
static void find_line(const char *text, size_t length, size_t line,
                      size_t *start, size_t *end)
{
    size_t i = 0;
    if (length >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0)
        i = 3; /* libyaml does not count the BOM in columns */
    for (size_t current = 0; current < line && i < length; i++) {
        if (text[i] == '\n' ||
            (text[i] == '\r' && (i + 1 >= length || text[i + 1] != '\n')))
            current++;
    }
    *start = i;
    while (i < length && text[i] != '\n' && text[i] != '\r')
        i++;
    *end = i;
}

/* Appends the shown line and the caret line (without "^") for `at`, with a
 * window around the column when the line is long. Tabs are kept in both, so
 * the caret lines up however the terminal expands them. */
static void quote_line(const where *at, char *shown, size_t shown_size,
                       char *caret, size_t caret_size)
{
    size_t start, end;
    find_line(at->text, at->length, at->line, &start, &end);
    size_t col = start;
    for (size_t c = 0; c < at->column && col < end; c++) {
        col++;
        while (col < end && is_continuation((unsigned char)at->text[col]))
            col++;
    }
    size_t from = start, to = end;
    if (end - start > LINE_WINDOW) {
        from = col > start + LINE_WINDOW * 3 / 5 ? col - LINE_WINDOW * 3 / 5
                                                 : start;
        if (from + LINE_WINDOW > end)
            from = end - LINE_WINDOW;
        to = from + LINE_WINDOW;
        while (from < col && is_continuation((unsigned char)at->text[from]))
            from++;
        while (to > col && to < end &&
               is_continuation((unsigned char)at->text[to]))
            to--;
    }
    size_t s = 0, k = 0;
    if (from > start) {
        s += (size_t)snprintf(shown, shown_size, "...");
        k += (size_t)snprintf(caret, caret_size, "   ");
    }
    for (size_t i = from; i < to && s + 8 < shown_size; i++) {
        unsigned char c = (unsigned char)at->text[i];
        if (i < col && !is_continuation(c) && k + 2 < caret_size)
            caret[k++] = c == '\t' ? '\t' : ' ';
        size_t n = c < 0x80 ? 1 : utf8_sequence(at->text + i, to - i);
        if (n > 1) {
            memcpy(shown + s, at->text + i, n);
            s += n;
            i += n - 1;
        } else {
            /* Control characters and bytes that are not UTF-8. */
            bool plain = n == 1 && (c >= 0x20 || c == '\t') && c != 0x7F;
            shown[s++] = plain ? (char)c : '?';
        }
    }
    if (to < end)
        s += (size_t)snprintf(shown + s, shown_size - s, "...");
    shown[s] = '\0';
    /* A caret past the end of the line (a missing "=", end of input). */
    for (size_t c = utf8_chars(at->text + start, end - start);
         c < at->column && k + 2 < caret_size && k < LINE_WINDOW + 8; c++)
        caret[k++] = ' ';
    caret[k] = '\0';
}

/* Reports `at: message`, the line and a caret; without a place, reports
 * `source: message`. Returns -1. */
static int fail_at(load_ctx *ctx, const where *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail_at(load_ctx *ctx, const where *at, const char *fmt, ...)
{
    char message[sizeof ctx->err->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    if (!at)
        return error_set(ctx->err, "%s: %s", ctx->cfg->source, message);

    char head[sizeof message], shown[LINE_WINDOW + 16], caret[LINE_WINDOW + 16];
    snprintf(head, sizeof head, "%s:%zu:%zu: ", at->source, at->line + 1,
             at->column + 1);
    quote_line(at, shown, sizeof shown, caret, sizeof caret);
    /* Shorten the message, not the caret, when the whole does not fit. */
    size_t fixed = strlen(head) + 3 + strlen(shown) + 3 + strlen(caret) + 1;
    size_t room = fixed + 16 < sizeof message ? sizeof message - 1 - fixed : 16;
    if (strlen(message) > room) {
        size_t cut = room - 3;
        while (cut > 0 && is_continuation((unsigned char)message[cut]))
            cut--;
        memcpy(message + cut, "...", 4);
    }
    return error_set(ctx->err, "%s%s\n  %s\n  %s^", head, message, shown,
                     caret);
}

static where where_mark(const load_ctx *ctx, yaml_mark_t mark)
{
    return (where){ctx->source, ctx->text, ctx->length, mark.line,
                   mark.column};
}

/* Quotes text for a message: at most SHOW_MAX bytes, control characters
 * and bytes that are not UTF-8 as '?'. */
static const char *show(const char *text, size_t length, bool quoted,
                        char *buf, size_t size)
{
    size_t n = length, k = 0;
    bool cut = n > SHOW_MAX;
    if (cut) {
        n = SHOW_MAX;
        while (n > 0 && is_continuation((unsigned char)text[n]))
            n--;
    }
    if (quoted)
        buf[k++] = '"';
    for (size_t i = 0; i < n && k + 9 < size; i++) {
        unsigned char c = (unsigned char)text[i];
        size_t len = utf8_sequence(text + i, n - i);
        if (len > 1) {
            memcpy(buf + k, text + i, len);
            k += len;
            i += len - 1;
        } else {
            buf[k++] = len == 0 || c < 0x20 || c == 0x7F ? '?' : (char)c;
        }
    }
    if (cut)
        k += (size_t)snprintf(buf + k, size - k, "...");
    if (quoted)
        buf[k++] = '"';
    buf[k] = '\0';
    return buf;
}

/* "a mapping", "a sequence", "an empty value" or the quoted scalar. */
static const char *describe(const yaml_node_t *node, char *buf, size_t size)
{
    if (!node || (node->type == YAML_SCALAR_NODE &&
                  node->data.scalar.length == 0))
        return "an empty value";
    if (node->type == YAML_MAPPING_NODE)
        return "a mapping";
    if (node->type == YAML_SEQUENCE_NODE)
        return "a sequence";
    return show((const char *)node->data.scalar.value,
                node->data.scalar.length, true, buf, size);
}

static void list_keys(const schema_field *fields, char *buf, size_t size)
{
    size_t k = 0;
    buf[0] = '\0';
    for (const schema_field *f = fields; f->key && k < size; f++)
        k += (size_t)snprintf(buf + k, size - k, "%s%s",
                              f == fields ? "" : ", ", f->key);
}

/* Optimal string alignment distance, so that a swap of two neighbours
 * ("d_modle") counts as one edit. */
static size_t edit_distance(const char *a, size_t na, const char *b,
                            size_t nb)
{
    enum { N = 64 };
    size_t rows[3][N + 1];
    if (na > N || nb > N)
        return SIZE_MAX;
    size_t *prev2 = rows[0], *prev = rows[1], *cur = rows[2];
    for (size_t j = 0; j <= nb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= na; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= nb; j++) {
            size_t cost = a[i - 1] != b[j - 1];
            size_t best = prev[j - 1] + cost;
            if (prev[j] + 1 < best)
                best = prev[j] + 1;
            if (cur[j - 1] + 1 < best)
                best = cur[j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] &&
                a[i - 2] == b[j - 1] && prev2[j - 2] + 1 < best)
                best = prev2[j - 2] + 1;
            cur[j] = best;
        }
        size_t *t = prev2;
        prev2 = prev;
        prev = cur;
        cur = t;
    }
    return prev[nb];
}

static int fail_unknown_key(load_ctx *ctx, const where *at, const char *path,
                            const schema_field *fields, const char *key,
                            size_t length)
{
    const char *noun = path[0] ? "key" : "section";
    char shown[SHOW_BUF];
    show(key, length, true, shown, sizeof shown);
    const schema_field *best = NULL;
    size_t best_distance = SIZE_MAX;
    for (const schema_field *f = fields; f->key; f++) {
        size_t d = edit_distance(key, length, f->key, strlen(f->key));
        size_t limit = strlen(f->key) / 3 > 1 ? strlen(f->key) / 3 : 1;
        if (d <= limit && d < best_distance) {
            best = f;
            best_distance = d;
        }
    }
    if (best)
        return fail_at(ctx, at, "%s%sunknown %s %s, did you mean \"%s\"?",
                       path, path[0] ? ": " : "", noun, shown, best->key);
    char keys[512];
    list_keys(fields, keys, sizeof keys);
    return fail_at(ctx, at, "%s%sunknown %s %s (expected one of: %s)", path,
                   path[0] ? ": " : "", noun, shown, keys);
}

static const schema_field *find_field(const schema_field *fields,
                                      const char *key, size_t length)
{
    for (const schema_field *f = fields; f->key; f++)
        if (strlen(f->key) == length && memcmp(f->key, key, length) == 0)
            return f;
    return NULL;
}

/* Formats a key path into out[PATH_LEN]; schema paths always fit. */
static void format_path(char *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void format_path(char *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, PATH_LEN, fmt, ap);
    va_end(ap);
}

static void join_path(char *out, const char *path, const char *key)
{
    format_path(out, "%s%s%s", path, path[0] ? "." : "", key);
}

static void record_mark(load_ctx *ctx, size_t offset, const char *path,
                        const where *at)
{
    key_mark *mark = NULL;
    for (int i = 0; i < ctx->mark_count; i++)
        if (ctx->marks[i].offset == offset)
            mark = &ctx->marks[i];
    if (!mark && ctx->mark_count < MARKS_MAX)
        mark = &ctx->marks[ctx->mark_count++];
    if (!mark)
        return;
    mark->offset = offset;
    format_path(mark->path, "%s", path);
    mark->at = *at;
    mark->order = ++ctx->order;
}

/* ------------------------------------------------------------------------
 * Leaves: numbers with an end pointer and a range check.
 * ------------------------------------------------------------------------ */

static const char *expectation(const schema_field *f, char *buf, size_t size)
{
    switch (f->kind) {
    case FIELD_INT: return "an integer";
    case FIELD_U64: return "an unsigned integer";
    case FIELD_DOUBLE: return "a number";
    case FIELD_STRING: return "a string";
    case FIELD_ENUM: {
        size_t k = (size_t)snprintf(buf, size, "one of ");
        for (int i = 0; f->names[i] && k < size; i++)
            k += (size_t)snprintf(buf + k, size - k, "%s%s", i ? ", " : "",
                                  f->names[i]);
        return buf;
    }
    case FIELD_SECTION: return "a mapping";
    case FIELD_SEQUENCE: return "a sequence of mappings";
    }
    return "?";
}

static void range_text(const schema_field *f, char *buf, size_t size)
{
    if (f->kind == FIELD_U64) {
        snprintf(buf, size, "0..%" PRIu64, UINT64_MAX);
    } else if (f->kind == FIELD_INT) {
        snprintf(buf, size, "%.0f..%.0f", f->min, f->max);
    } else if (!f->open && f->max < NO_MAX) {
        snprintf(buf, size, "%g..%g", f->min, f->max);
    } else {
        int k = snprintf(buf, size, "%s %g", f->open & OPEN_MIN ? ">" : ">=",
                         f->min);
        if (f->max < NO_MAX && k > 0 && (size_t)k < size)
            snprintf(buf + k, size - (size_t)k, " and %s %g",
                     f->open & OPEN_MAX ? "<" : "<=", f->max);
    }
}

static bool all_of(const char *s, size_t n, const char *allowed)
{
    for (size_t i = 0; i < n; i++)
        if (!s[i] || !strchr(allowed, s[i]))
            return false;
    return true;
}

static bool has_digit(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] >= '0' && s[i] <= '9')
            return true;
    return false;
}

typedef enum parse_status { PARSED, MALFORMED, OUT_OF_RANGE } parse_status;

/* Decimal integers only: "12abc", "1.5", "0x10" and "" are malformed. */
static parse_status parse_integer(const char *s, size_t n, bool allow_sign,
                                  long long *value, uint64_t *uvalue)
{
    size_t digits_from = n > 0 && (s[0] == '+' || (allow_sign && s[0] == '-'));
    if (n == digits_from || !all_of(s + digits_from, n - digits_from,
                                    "0123456789"))
        return MALFORMED;
    char *end;
    errno = 0;
    if (value)
        *value = strtoll(s, &end, 10);
    else
        *uvalue = strtoull(s, &end, 10);
    if (end != s + n)
        return MALFORMED;
    return errno == ERANGE ? OUT_OF_RANGE : PARSED;
}

/* Decimal reals: rejects "nan", ".inf", hex floats and trailing text. */
static parse_status parse_real(const char *s, size_t n, double *value)
{
    if (!has_digit(s, n) || !all_of(s, n, "0123456789+-.eE"))
        return MALFORMED;
    char *end;
    errno = 0;
    *value = strtod(s, &end);
    if (end != s + n)
        return MALFORMED;
    /* Underflow to a tiny value is fine; overflow to infinity is not. */
    if ((errno == ERANGE && fabs(*value) == HUGE_VAL) || !isfinite(*value))
        return OUT_OF_RANGE;
    return PARSED;
}

static bool in_range(const schema_field *f, double v)
{
    if (v < f->min || ((f->open & OPEN_MIN) && v == f->min))
        return false;
    if (v > f->max || ((f->open & OPEN_MAX) && v == f->max))
        return false;
    return true;
}

/* Sets one leaf from a scalar node (NULL: an empty value). */
static int set_leaf(load_ctx *ctx, const schema_field *f, unsigned char *base,
                    const char *path, const yaml_node_t *node,
                    const where *at)
{
    char expected[128], got[SHOW_BUF], range[96];
    if (node && node->type != YAML_SCALAR_NODE)
        return fail_at(ctx, at, "%s: expected %s, got %s", path,
                       expectation(f, expected, sizeof expected),
                       describe(node, got, sizeof got));
    const char *text = node ? (const char *)node->data.scalar.value : "";
    size_t n = node ? node->data.scalar.length : 0;
    unsigned char *field = base + f->offset;
    parse_status status = PARSED;

    switch (f->kind) {
    case FIELD_INT: {
        long long v = 0;
        status = parse_integer(text, n, true, &v, NULL);
        if (status == PARSED && !in_range(f, (double)v))
            status = OUT_OF_RANGE;
        if (status == PARSED) {
            int i = (int)v;
            memcpy(field, &i, sizeof i);
        }
        break;
    }
    case FIELD_U64: {
        uint64_t v = 0;
        status = parse_integer(text, n, false, NULL, &v);
        if (status == PARSED)
            memcpy(field, &v, sizeof v);
        break;
    }
    case FIELD_DOUBLE: {
        double v = 0;
        status = parse_real(text, n, &v);
        if (status == PARSED && !in_range(f, v))
            status = OUT_OF_RANGE;
        if (status == PARSED)
            memcpy(field, &v, sizeof v);
        break;
    }
    case FIELD_STRING:
        if (strlen(text) != n)
            return fail_at(ctx, at, "%s: strings must not contain NUL bytes",
                           path);
        if ((double)n > f->max)
            return fail_at(ctx, at,
                           "%s: string is too long (%zu bytes, at most %.0f)",
                           path, n, f->max);
        if ((double)n < f->min)
            return fail_at(ctx, at, "%s: expected a non-empty string", path);
        memset(field, 0, (size_t)f->max + 1);
        memcpy(field, text, n);
        return 0;
    case FIELD_ENUM:
        for (int i = 0; f->names[i]; i++) {
            if (strlen(f->names[i]) == n && memcmp(f->names[i], text, n) == 0) {
                memcpy(field, &i, sizeof i);
                return 0;
            }
        }
        status = MALFORMED;
        break;
    case FIELD_SECTION:
    case FIELD_SEQUENCE:
        status = MALFORMED; /* callers route these elsewhere */
        break;
    }
    if (status == MALFORMED)
        return fail_at(ctx, at, "%s: expected %s, got %s", path,
                       expectation(f, expected, sizeof expected),
                       describe(node, got, sizeof got));
    if (status == OUT_OF_RANGE) {
        range_text(f, range, sizeof range);
        return fail_at(ctx, at, "%s: %s is out of range (%s)", path,
                       show(text, n, false, got, sizeof got), range);
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * The walker.
 * ------------------------------------------------------------------------ */

static int walk_mapping(load_ctx *ctx, yaml_document_t *doc,
                        yaml_node_t *node, const schema_field *fields,
                        unsigned char *base, const char *path, bool record);

static int walk_sequence(load_ctx *ctx, yaml_document_t *doc,
                         yaml_node_t *node, const schema_field *f,
                         unsigned char *base, const char *path)
{
    char expected[64], got[SHOW_BUF];
    where at = where_mark(ctx, node->start_mark);
    if (node->type != YAML_SEQUENCE_NODE)
        return fail_at(ctx, &at, "%s: expected %s, got %s", path,
                       expectation(f, expected, sizeof expected),
                       describe(node, got, sizeof got));
    yaml_node_item_t *items = node->data.sequence.items.start;
    size_t count = (size_t)(node->data.sequence.items.top - items);
    if ((double)count < f->min || (double)count > f->max)
        return fail_at(ctx, &at, "%s: expected %.0f..%.0f entries, got %zu",
                       path, f->min, f->max, count);
    unsigned char *array = base + f->offset;
    memset(array, 0, f->item_size * (size_t)f->max);
    for (size_t i = 0; i < count; i++) {
        char item_path[PATH_LEN];
        format_path(item_path, "%s[%zu]", path, i);
        unsigned char *item = array + i * f->item_size;
        f->item_init(item);
        int rc = walk_mapping(ctx, doc, yaml_document_get_node(doc, items[i]),
                              f->children, item, item_path, false);
        if (rc)
            return rc;
    }
    int n = (int)count;
    memcpy(base + f->count_offset, &n, sizeof n);
    return 0;
}

static int walk_mapping(load_ctx *ctx, yaml_document_t *doc,
                        yaml_node_t *node, const schema_field *fields,
                        unsigned char *base, const char *path, bool record)
{
    char got[SHOW_BUF], keys[512];
    where at = where_mark(ctx, node->start_mark);
    if (node->type != YAML_MAPPING_NODE) {
        if (path[0])
            return fail_at(ctx, &at, "%s: expected a mapping, got %s", path,
                           describe(node, got, sizeof got));
        list_keys(fields, keys, sizeof keys);
        return fail_at(ctx, &at,
                       "expected a mapping with sections %s, got %s", keys,
                       describe(node, got, sizeof got));
    }
    const char *noun = path[0] ? "key" : "section";
    const char *sep = path[0] ? ": " : "";
    yaml_node_pair_t *pairs = node->data.mapping.pairs.start;
    yaml_node_pair_t *top = node->data.mapping.pairs.top;
    for (yaml_node_pair_t *pair = pairs; pair < top; pair++) {
        yaml_node_t *key = yaml_document_get_node(doc, pair->key);
        yaml_node_t *value = yaml_document_get_node(doc, pair->value);
        where key_at = where_mark(ctx, key->start_mark);
        if (key->type != YAML_SCALAR_NODE)
            return fail_at(ctx, &key_at, "%s%sexpected a %s name, got %s",
                           path, sep, noun, describe(key, got, sizeof got));
        const char *name = (const char *)key->data.scalar.value;
        size_t length = key->data.scalar.length;
        for (yaml_node_pair_t *prev = pairs; prev < pair; prev++) {
            yaml_node_t *other = yaml_document_get_node(doc, prev->key);
            if (other->type == YAML_SCALAR_NODE &&
                other->data.scalar.length == length &&
                memcmp(other->data.scalar.value, name, length) == 0)
                return fail_at(ctx, &key_at,
                               "%s%sduplicate %s %s (first given on line %zu)",
                               path, sep, noun,
                               show(name, length, true, got, sizeof got),
                               other->start_mark.line + 1);
        }
        const schema_field *f = find_field(fields, name, length);
        if (!f)
            return fail_unknown_key(ctx, &key_at, path, fields, name, length);

        char child[PATH_LEN];
        join_path(child, path, f->key);
        int rc;
        if (f->kind == FIELD_SECTION) {
            rc = walk_mapping(ctx, doc, value, f->children, base, child,
                              record);
        } else if (f->kind == FIELD_SEQUENCE) {
            rc = walk_sequence(ctx, doc, value, f, base, child);
        } else {
            where value_at = where_mark(ctx, value->start_mark);
            rc = set_leaf(ctx, f, base, child, value, &value_at);
            if (rc == 0 && record)
                record_mark(ctx, (size_t)(base - (unsigned char *)ctx->cfg) +
                                     f->offset,
                            child, &key_at);
        }
        if (rc)
            return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Documents and --set overrides.
 * ------------------------------------------------------------------------ */

/* Reports libyaml's error. The parser read ctx->text from `offset` on (a
 * --set value sits after its key), so its first line is shifted. */
static int fail_yaml(load_ctx *ctx, const yaml_parser_t *parser,
                     size_t offset)
{
    const char *input = ctx->text + offset;
    size_t shift = utf8_chars(ctx->text, offset);
    where at = {ctx->source, ctx->text, ctx->length, 0, 0};
    const char *problem = parser->problem ? parser->problem : "unknown error";
    if (parser->error == YAML_MEMORY_ERROR)
        return fail_at(ctx, NULL, "out of memory while reading YAML");
    if (parser->error == YAML_READER_ERROR) {
        /* The reader gives a byte offset, not a mark. */
        size_t end = parser->problem_offset, line_start = 0;
        if (end > ctx->length - offset)
            end = ctx->length - offset;
        for (size_t i = 0; i < end; i++) {
            if (input[i] == '\n') {
                at.line++;
                line_start = i + 1;
            }
        }
        at.column = utf8_chars(input + line_start, end - line_start) +
                    (at.line == 0 ? shift : 0);
        if (parser->problem_value != -1)
            return fail_at(ctx, &at, "invalid YAML input: %s (byte 0x%02X)",
                           problem, (unsigned)parser->problem_value);
        return fail_at(ctx, &at, "invalid YAML input: %s", problem);
    }
    at.line = parser->problem_mark.line;
    at.column = parser->problem_mark.column + (at.line == 0 ? shift : 0);
    if (parser->context)
        return fail_at(ctx, &at,
                       "YAML syntax error: %s (%s at line %zu, column %zu)",
                       problem, parser->context,
                       parser->context_mark.line + 1,
                       parser->context_mark.column + 1 +
                           (parser->context_mark.line == 0 ? shift : 0));
    return fail_at(ctx, &at, "YAML syntax error: %s", problem);
}

static int load_document(load_ctx *ctx)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser))
        return fail_at(ctx, NULL, "out of memory while reading YAML");
    yaml_parser_set_input_string(&parser, (const unsigned char *)ctx->text,
                                 ctx->length);
    if (!yaml_parser_load(&parser, &doc)) {
        int rc = fail_yaml(ctx, &parser, 0);
        yaml_parser_delete(&parser);
        return rc;
    }
    int rc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) {
        char keys[512];
        list_keys(root_fields, keys, sizeof keys);
        rc = fail_at(ctx, NULL,
                     "the configuration is empty; expected a mapping with "
                     "sections %s",
                     keys);
    } else {
        rc = walk_mapping(ctx, &doc, root, root_fields,
                          (unsigned char *)ctx->cfg, "", true);
    }
    yaml_document_delete(&doc);
    if (rc == 0) {
        yaml_document_t extra;
        if (!yaml_parser_load(&parser, &extra)) {
            rc = fail_yaml(ctx, &parser, 0);
        } else {
            if (yaml_document_get_root_node(&extra)) {
                where at = where_mark(ctx, extra.start_mark);
                rc = fail_at(ctx, &at,
                             "a configuration is one YAML document; "
                             "found a second one");
            }
            yaml_document_delete(&extra);
        }
    }
    yaml_parser_delete(&parser);
    return rc;
}

/* Parses a --set value as a YAML scalar and sets the leaf. */
static int set_value(load_ctx *ctx, const schema_field *f, unsigned char *base,
                     const char *path, size_t value_offset)
{
    const char *value = ctx->text + value_offset;
    size_t value_chars = utf8_chars(ctx->text, value_offset);
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser))
        return fail_at(ctx, NULL, "out of memory while reading YAML");
    yaml_parser_set_input_string(&parser, (const unsigned char *)value,
                                 ctx->length - value_offset);
    if (!yaml_parser_load(&parser, &doc)) {
        int rc = fail_yaml(ctx, &parser, value_offset);
        yaml_parser_delete(&parser);
        return rc;
    }
    yaml_node_t *node = yaml_document_get_root_node(&doc);
    where at = {ctx->source, ctx->text, ctx->length, 0, value_chars};
    if (node) {
        at.line = node->start_mark.line;
        at.column = node->start_mark.column +
                    (node->start_mark.line == 0 ? value_chars : 0);
    }
    int rc = set_leaf(ctx, f, base, path, node, &at);
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return rc;
}

/* Applies `a.b=value`, `cluster.devices.N.key=value` or
 * `cluster.devices[N].key=value`. */
static int apply_set(load_ctx *ctx, const char *arg)
{
    ctx->source = "--set";
    ctx->text = arg;
    ctx->length = strlen(arg);
    where at = {ctx->source, arg, ctx->length, 0, 0};
    char keys[512], got[SHOW_BUF];

    const char *equals = strchr(arg, '=');
    if (!equals) {
        at.column = utf8_chars(arg, ctx->length);
        return fail_at(ctx, &at,
                       "expected KEY=VALUE (like model.d_model=256), "
                       "missing \"=\" in %s",
                       show(arg, ctx->length, true, got, sizeof got));
    }

    const schema_field *fields = root_fields;
    unsigned char *base = (unsigned char *)ctx->cfg;
    const schema_field *f = NULL;
    char path[PATH_LEN] = "";
    bool record = true;
    const char *p = arg;
    for (;;) {
        const char *segment = p;
        while (p < equals && *p != '.' && *p != '[')
            p++;
        at.column = utf8_chars(arg, (size_t)(segment - arg));
        if (p == segment)
            return fail_at(ctx, &at, "%s%sexpected a key name", path,
                           path[0] ? ": " : "");
        f = find_field(fields, segment, (size_t)(p - segment));
        if (!f)
            return fail_unknown_key(ctx, &at, path, fields, segment,
                                    (size_t)(p - segment));
        char child[PATH_LEN];
        join_path(child, path, f->key);
        memcpy(path, child, sizeof path);

        if (f->kind == FIELD_SEQUENCE) {
            /* An index into the existing entries: .N or [N]. */
            int count;
            memcpy(&count, base + f->count_offset, sizeof count);
            bool bracket = p < equals && *p == '[';
            if (p < equals)
                p++;
            const char *digits = p;
            long index = 0;
            while (p < equals && *p >= '0' && *p <= '9' && p - digits < 9)
                index = index * 10 + (*p++ - '0');
            at.column = utf8_chars(arg, (size_t)(digits - arg));
            if (p == digits)
                return fail_at(ctx, &at,
                               "%s: expected an entry index (0..%d) and a "
                               "key, like %s.0.%s=VALUE",
                               path, count - 1, path, f->children[0].key);
            if (index >= count)
                return fail_at(ctx, &at,
                               "%s: index %ld is out of range (0..%d)", path,
                               index, count - 1);
            if (bracket) {
                at.column = utf8_chars(arg, (size_t)(p - arg));
                if (p == equals || *p != ']')
                    return fail_at(ctx, &at, "%s: expected \"]\"", path);
                p++;
            }
            base += f->offset + (size_t)index * f->item_size;
            format_path(child, "%s[%ld]", path, index);
            memcpy(path, child, sizeof path);
            record = false;
        }
        if (f->kind == FIELD_SECTION || f->kind == FIELD_SEQUENCE) {
            fields = f->children;
            at.column = utf8_chars(arg, (size_t)(p - arg));
            if (p == equals) {
                list_keys(fields, keys, sizeof keys);
                return fail_at(ctx, &at,
                               "%s: not a value; set one of its keys: %s",
                               path, keys);
            }
            if (*p != '.')
                return fail_at(ctx, &at, "%s: expected \".\" and a key",
                               path);
            p++;
            continue;
        }
        if (p != equals) {
            at.column = utf8_chars(arg, (size_t)(p - arg));
            return fail_at(ctx, &at, "%s: is a value and has no keys", path);
        }
        break;
    }
    int rc = set_value(ctx, f, base, path, (size_t)(equals + 1 - arg));
    if (rc == 0 && record) {
        at.column = 0;
        record_mark(ctx, (size_t)(base - (unsigned char *)ctx->cfg) + f->offset,
                    path, &at);
    }
    return rc;
}

/* ------------------------------------------------------------------------
 * Cross-field checks, reported where the later of the two keys was set.
 * ------------------------------------------------------------------------ */

static const key_mark *find_mark(const load_ctx *ctx, size_t offset)
{
    for (int i = 0; i < ctx->mark_count; i++)
        if (ctx->marks[i].offset == offset)
            return &ctx->marks[i];
    return NULL;
}

static int fail_cross(load_ctx *ctx, size_t offset_a, size_t offset_b,
                      const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail_cross(load_ctx *ctx, size_t offset_a, size_t offset_b,
                      const char *fmt, ...)
{
    char message[sizeof ctx->err->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    const key_mark *a = find_mark(ctx, offset_a);
    const key_mark *b = find_mark(ctx, offset_b);
    const key_mark *blamed = !a || (b && b->order > a->order) ? b : a;
    if (!blamed)
        return fail_at(ctx, NULL, "%s", message);
    return fail_at(ctx, &blamed->at, "%s: %s", blamed->path, message);
}

int config_placement(const config *cfg, int *placement, char *reason,
                     size_t reason_size)
{
    const char *p = cfg->cluster.placement;
    int L = cfg->model.n_layers, E = cfg->moe.n_experts;
    int groups = 0, in_group = 0, total = 0;
    while (*p == ' ' || *p == '\t')
        p++;
    if (!*p)
        return 0;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (*p == ';' || *p == '\0') {
            if (in_group != E) {
                snprintf(reason, reason_size, "layer group %d has %d ranks; "
                         "expected moe.n_experts = %d", groups + 1, in_group,
                         E);
                return -1;
            }
            groups++;
            in_group = 0;
            if (*p == '\0')
                break;
            p++;
            continue;
        }
        char *end;
        long rank = strtol(p, &end, 10);
        if (end == p || rank < 0 || rank >= cfg->cluster.device_count) {
            snprintf(reason, reason_size, "expected a rank in 0..%d, got "
                     "\"%.*s\"", cfg->cluster.device_count - 1,
                     (int)strcspn(p, " \t,;"), p);
            return -1;
        }
        if (groups >= L || in_group >= E) {
            snprintf(reason, reason_size, "too many ranks: expected %d "
                     "group(s) of %d (layers x experts)", L, E);
            return -1;
        }
        if (placement)
            placement[groups * E + in_group] = (int)rank;
        in_group++;
        total++;
        p = end;
    }
    if (groups != 1 && groups != L) {
        snprintf(reason, reason_size, "%d layer groups; expected 1 (for every "
                 "layer) or model.n_layers = %d", groups, L);
        return -1;
    }
    if (groups == 1 && placement)
        for (int l = 1; l < L; l++)
            memcpy(placement + (size_t)l * E, placement,
                   (size_t)E * sizeof *placement);
    (void)total;
    return 1;
}

static int check_cross_fields(load_ctx *ctx)
{
    const config *c = ctx->cfg;
    char reason[256];
    if (config_placement(c, NULL, reason, sizeof reason) < 0)
        return fail_cross(ctx, CFG(cluster.placement), CFG(cluster.placement),
                          "%s", reason);
    if (c->model.d_model % c->model.n_heads != 0)
        return fail_cross(ctx, CFG(model.d_model), CFG(model.n_heads),
                          "model.d_model (%d) must be a multiple of "
                          "model.n_heads (%d)",
                          c->model.d_model, c->model.n_heads);
    int head_dim = c->model.d_model / c->model.n_heads;
    if (head_dim % 2 != 0)
        return fail_cross(ctx, CFG(model.d_model), CFG(model.n_heads),
                          "the head dimension model.d_model / model.n_heads "
                          "= %d / %d = %d must be even (RoPE rotates pairs)",
                          c->model.d_model, c->model.n_heads, head_dim);
    if (c->model.n_kv_heads > 0 && c->model.n_heads % c->model.n_kv_heads)
        return fail_cross(ctx, CFG(model.n_kv_heads), CFG(model.n_heads),
                          "model.n_heads (%d) must be a multiple of "
                          "model.n_kv_heads (%d)",
                          c->model.n_heads, c->model.n_kv_heads);
    if (c->moe.top_k > c->moe.n_experts)
        return fail_cross(ctx, CFG(moe.top_k), CFG(moe.n_experts),
                          "moe.top_k (%d) must not exceed moe.n_experts (%d)",
                          c->moe.top_k, c->moe.n_experts);
    if (c->train.min_lr > c->train.lr)
        return fail_cross(ctx, CFG(train.min_lr), CFG(train.lr),
                          "train.min_lr (%g) must not exceed train.lr (%g)",
                          c->train.min_lr, c->train.lr);
    if (c->train.warmup_steps > c->train.steps)
        return fail_cross(ctx, CFG(train.warmup_steps), CFG(train.steps),
                          "train.warmup_steps (%d) must not exceed "
                          "train.steps (%d)",
                          c->train.warmup_steps, c->train.steps);
    return 0;
}

/* ------------------------------------------------------------------------
 * Entry points.
 * ------------------------------------------------------------------------ */

/* File name without directory and .yaml/.yml. */
static void name_from_source(char *name, size_t size, const char *source)
{
    const char *base = strrchr(source, '/');
    base = base ? base + 1 : source;
    size_t n = strlen(base);
    if (n > 5 && strcmp(base + n - 5, ".yaml") == 0)
        n -= 5;
    else if (n > 4 && strcmp(base + n - 4, ".yml") == 0)
        n -= 4;
    if (n >= size) {
        n = size - 1;
        while (n > 0 && is_continuation((unsigned char)base[n]))
            n--;
    }
    memcpy(name, base, n);
    name[n] = '\0';
}

static int load(config *cfg, const char *source, const char *name,
                const char *text, size_t length, const char *const *sets,
                int set_count, moe_error *err)
{
    config_defaults(cfg);
    if (strlen(source) >= sizeof cfg->source)
        return error_set(err, "%.64s...: path is too long (at most %zu bytes)",
                         source, sizeof cfg->source - 1);
    memset(cfg->source, 0, sizeof cfg->source);
    strcpy(cfg->source, source);
    memset(cfg->name, 0, sizeof cfg->name);
    if (name)
        snprintf(cfg->name, sizeof cfg->name, "%s", name);
    else
        name_from_source(cfg->name, sizeof cfg->name, source);

    load_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return error_set(err, "%s: out of memory", source);
    moe_error scratch;
    ctx->cfg = cfg;
    ctx->err = err ? err : &scratch;
    ctx->source = source;
    ctx->text = text;
    ctx->length = length;

    int rc = load_document(ctx);
    for (int i = 0; rc == 0 && i < set_count; i++)
        rc = apply_set(ctx, sets[i]);
    if (rc == 0)
        rc = check_cross_fields(ctx);
    free(ctx);
    return rc;
}

int config_load_text(config *cfg, const char *source, const char *text,
                     size_t length, const char *const *sets, int set_count,
                     moe_error *err)
{
    return load(cfg, source, NULL, text, length, sets, set_count, err);
}

/* Reads a whole file; the caller frees *text. */
static int read_file(const char *path, char **text, size_t *length,
                     moe_error *err)
{
    FILE *file = fopen(path, "rb");
    if (!file)
        return error_set_errno(err, "%s: cannot open", path);
    size_t size = 0, capacity = 4096;
    char *buf = malloc(capacity);
    int rc = 0;
    for (;;) {
        if (!buf) {
            rc = error_set(err, "%s: out of memory", path);
            break;
        }
        size += fread(buf + size, 1, capacity - size, file);
        if (ferror(file)) {
            rc = error_set_errno(err, "%s: cannot read", path);
            break;
        }
        if (size < capacity)
            break;
        if (capacity >= ((size_t)64 << 20)) {
            rc = error_set(err, "%s: too large for a configuration (over "
                                "64 MiB)", path);
            break;
        }
        capacity *= 2;
        char *bigger = realloc(buf, capacity);
        if (!bigger)
            free(buf);
        buf = bigger;
    }
    fclose(file);
    if (rc) {
        free(buf);
        return rc;
    }
    *text = buf;
    *length = size;
    return 0;
}

int config_load(config *cfg, const char *path, const char *const *sets,
                int set_count, moe_error *err)
{
    if (!path)
        return load(cfg, "<embedded default>", "default", config_default_yaml,
                    config_default_yaml_length, sets, set_count, err);
    char *text = NULL;
    size_t length = 0;
    if (read_file(path, &text, &length, err))
        return -1;
    int rc = load(cfg, path, NULL, text, length, sets, set_count, err);
    free(text);
    return rc;
}

/* ------------------------------------------------------------------------
 * Printing: the same tables, as YAML that loads back to the same struct.
 * ------------------------------------------------------------------------ */

static bool plain_safe(const char *s)
{
    static const char *const reserved[] = {
        "null", "true", "false", "yes", "no", "on", "off", "y", "n", NULL,
    };
    char c = s[0];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
          c == '/'))
        return false;
    if (!all_of(s, strlen(s),
                "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                "0123456789_./-"))
        return false;
    for (int i = 0; reserved[i]; i++)
        if (strcasecmp(s, reserved[i]) == 0)
            return false;
    return true;
}

static void print_string(FILE *out, const char *s)
{
    if (plain_safe(s)) {
        fputs(s, out);
        return;
    }
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(out, "\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", out);
        else if (*p == '\t')
            fputs("\\t", out);
        else if (*p < 0x20 || *p == 0x7F)
            fprintf(out, "\\x%02X", *p);
        else
            fputc(*p, out);
    }
    fputc('"', out);
}

/* Whole numbers as "24.0"; others in the shortest %g form that reads
 * back to the same double. */
static void print_double(FILE *out, double v)
{
    char buf[40];
    if (fabs(v) < 1e15 && v == (double)(long long)v) {
        fprintf(out, "%.1f", v);
        return;
    }
    for (int precision = 1; precision <= 17; precision++) {
        snprintf(buf, sizeof buf, "%.*g", precision, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    fputs(buf, out);
}

static void print_fields(FILE *out, const schema_field *fields,
                         const unsigned char *base, int indent, bool dash);

static void print_field(FILE *out, const schema_field *f,
                        const unsigned char *base, int indent)
{
    const unsigned char *field = base + f->offset;
    fprintf(out, "%s:", f->key);
    switch (f->kind) {
    case FIELD_INT: {
        int v;
        memcpy(&v, field, sizeof v);
        fprintf(out, " %d\n", v);
        break;
    }
    case FIELD_U64: {
        uint64_t v;
        memcpy(&v, field, sizeof v);
        fprintf(out, " %" PRIu64 "\n", v);
        break;
    }
    case FIELD_DOUBLE: {
        double v;
        memcpy(&v, field, sizeof v);
        fputc(' ', out);
        print_double(out, v);
        fputc('\n', out);
        break;
    }
    case FIELD_STRING:
        fputc(' ', out);
        print_string(out, (const char *)field);
        fputc('\n', out);
        break;
    case FIELD_ENUM: {
        int v, count = 0;
        memcpy(&v, field, sizeof v);
        while (f->names[count])
            count++;
        if (v >= 0 && v < count)
            fprintf(out, " %s\n", f->names[v]);
        else
            fprintf(out, " %d # not a valid value\n", v);
        break;
    }
    case FIELD_SECTION:
        fputc('\n', out);
        print_fields(out, f->children, base, indent + 2, false);
        break;
    case FIELD_SEQUENCE: {
        int count;
        memcpy(&count, base + f->count_offset, sizeof count);
        fputc('\n', out);
        for (int i = 0; i < count; i++)
            print_fields(out, f->children,
                         field + (size_t)i * f->item_size, indent + 4, true);
        break;
    }
    }
}

static void print_fields(FILE *out, const schema_field *fields,
                         const unsigned char *base, int indent, bool dash)
{
    for (const schema_field *f = fields; f->key; f++) {
        if (dash && f == fields)
            fprintf(out, "%*s- ", indent - 2, "");
        else
            fprintf(out, "%*s", indent, "");
        print_field(out, f, base, indent);
    }
}

void config_print(const config *cfg, FILE *out)
{
    /* The source goes into a comment: ASCII only, so it always reads back. */
    fputs("# resolved from ", out);
    for (const unsigned char *p = (const unsigned char *)cfg->source; *p; p++)
        fputc(*p < 0x20 || *p >= 0x7F ? '?' : *p, out);
    fputc('\n', out);
    for (const schema_field *f = root_fields; f->key; f++) {
        if (f != root_fields)
            fputc('\n', out);
        print_field(out, f, (const unsigned char *)cfg, 0);
    }
}
