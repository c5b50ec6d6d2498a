#include "engine/protocol/script.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const script_metric_names[SCRIPT_METRIC_COUNT] = {
#define X(name, what) #name,
    SCRIPT_METRICS(X)
#undef X
};

static const char *const op_names[] = {"<", "<=", ">", ">=", "==", "!="};
enum { OPS = sizeof op_names / sizeof op_names[0] };

static int script_fail(char *err, size_t size, const char *source, int line,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int script_fail(char *err, size_t size, const char *source, int line,
                       const char *fmt, ...)
{
    int n = snprintf(err, size, "%s:%d: ", source, line);
    if (n >= 0 && (size_t)n < size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err + n, size - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int grow(script *s)
{
    script_line *lines = realloc(s->lines, (size_t)(s->count + 1) *
                                               sizeof *lines);
    if (!lines)
        return -1;
    s->lines = lines;
    unsigned char *was = realloc(s->was_true, (size_t)(s->count + 1));
    if (!was)
        return -1;
    s->was_true = was;
    s->was_true[s->count] = 0;
    return 0;
}

int script_add(script *s, int step, const command *cmd, int line)
{
    if (grow(s) < 0)
        return -1;
    s->lines[s->count++] = (script_line){.kind = SCRIPT_AT, .line = line,
                                         .step = step, .cmd = *cmd};
    return 0;
}

void script_free(script *s)
{
    free(s->lines);
    free(s->was_true);
    memset(s, 0, sizeof *s);
}

/* The next blank-separated word of *p: its start and length. */
static size_t next_word(const char **p, const char **word)
{
    while (**p && isspace((unsigned char)**p))
        (*p)++;
    *word = *p;
    while (**p && !isspace((unsigned char)**p))
        (*p)++;
    return (size_t)(*p - *word);
}

/* A whole decimal integer word in [lo, hi]. */
static int parse_int(const char *word, size_t len, long lo, long hi,
                     long *out)
{
    if (len == 0 || len > 18)
        return -1;
    for (size_t i = 0; i < len; i++)
        if (!isdigit((unsigned char)word[i]))
            return -1;
    char buf[20];
    memcpy(buf, word, len);
    buf[len] = '\0';
    long v = strtol(buf, NULL, 10);
    if (v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_line(script_line *out, const char *source, int line_no,
                      const char *text, const command_limits *limits,
                      int last_step, char *err, size_t err_size)
{
    const char *p = text, *word;
    size_t len = next_word(&p, &word);
    char shown[48];
    snprintf(shown, sizeof shown, "%.*s", (int)(len < 40 ? len : 40), word);
    memset(out, 0, sizeof *out);
    out->line = line_no;
    long n;
    if (len == 5 && memcmp(word, "every", 5) == 0) {
        out->kind = SCRIPT_EVERY;
        len = next_word(&p, &word);
        snprintf(shown, sizeof shown, "%.*s", (int)(len < 40 ? len : 40),
                 word);
        if (parse_int(word, len, 1, 1000000000, &n) < 0)
            return script_fail(err, err_size, source, line_no,
                               "every: expected a step count N >= 1, got "
                               "\"%s\" (usage: every N COMMAND)", shown);
        out->every = (int)n;
    } else if (len == 4 && memcmp(word, "when", 4) == 0) {
        out->kind = SCRIPT_WHEN;
        len = next_word(&p, &word);
        out->metric = -1;
        for (int m = 0; m < SCRIPT_METRIC_COUNT; m++)
            if (strlen(script_metric_names[m]) == len &&
                memcmp(word, script_metric_names[m], len) == 0)
                out->metric = m;
        snprintf(shown, sizeof shown, "%.*s", (int)(len < 40 ? len : 40),
                 word);
        if (out->metric < 0) {
            char names[512] = "";
            for (int m = 0; m < SCRIPT_METRIC_COUNT; m++)
                snprintf(names + strlen(names), sizeof names - strlen(names),
                         "%s%s", m ? ", " : "", script_metric_names[m]);
            return script_fail(err, err_size, source, line_no,
                               "when: unknown metric \"%s\" (metrics: %s)",
                               shown, names);
        }
        len = next_word(&p, &word);
        int op = -1;
        for (int i = 0; i < OPS; i++)
            if (strlen(op_names[i]) == len && memcmp(word, op_names[i], len) == 0)
                op = i;
        snprintf(shown, sizeof shown, "%.*s", (int)(len < 40 ? len : 40),
                 word);
        if (op < 0)
            return script_fail(err, err_size, source, line_no,
                               "when: expected a comparison (< <= > >= == "
                               "!=), got \"%s\" (usage: when METRIC OP "
                               "VALUE COMMAND)", shown);
        out->op = (script_op)op;
        len = next_word(&p, &word);
        char buf[64];
        snprintf(buf, sizeof buf, "%.*s", (int)(len < 63 ? len : 63), word);
        char *end;
        errno = 0;
        double v = strtod(buf, &end);
        if (len == 0 || len > 63 || *end || errno == ERANGE || !isfinite(v))
            return script_fail(err, err_size, source, line_no,
                               "when: expected a number, got \"%s\"", buf);
        out->value = v;
    } else {
        out->kind = SCRIPT_AT;
        if (parse_int(word, len, 0, 1000000000, &n) < 0)
            return script_fail(err, err_size, source, line_no,
                               "expected STEP COMMAND, every N COMMAND or "
                               "when METRIC OP VALUE COMMAND, got \"%s\"",
                               shown);
        if (n > last_step)
            return script_fail(err, err_size, source, line_no,
                               "step %ld is past the run's last step %d", n,
                               last_step);
        out->step = (int)n;
    }
    while (*p && isspace((unsigned char)*p))
        p++;
    if (!*p)
        return script_fail(err, err_size, source, line_no,
                           "missing the command to run");
    char reason[256];
    if (command_parse(p, limits, &out->cmd, reason, sizeof reason) < 0)
        return script_fail(err, err_size, source, line_no, "%s", reason);
    if (out->cmd.kind == COMMAND_PAUSE || out->cmd.kind == COMMAND_RESUME)
        return script_fail(err, err_size, source, line_no,
                           "%s cannot be scripted: a paused job waits for a "
                           "resume that only a client of the control socket "
                           "can send",
                           out->cmd.kind == COMMAND_PAUSE ? "pause"
                                                          : "resume");
    return 0;
}

int script_parse(script *s, const char *source, const char *text,
                 const command_limits *limits, int last_step, char *err,
                 size_t err_size)
{
    script parsed = {0};
    int line_no = 0;
    for (const char *p = text; *p;) {
        const char *end = strchr(p, '\n');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        line_no++;
        char buf[1024];
        if (len >= sizeof buf) {
            script_free(&parsed);
            return script_fail(err, err_size, source, line_no,
                               "line too long (over %zu bytes)",
                               sizeof buf - 1);
        }
        memcpy(buf, p, len);
        buf[len] = '\0';
        char *hash = strchr(buf, '#');
        if (hash)
            *hash = '\0';
        for (char *c = buf; *c; c++)
            if ((unsigned char)*c < 0x20 && *c != '\t' && *c != '\r') {
                script_free(&parsed);
                return script_fail(err, err_size, source, line_no,
                                   "control character 0x%02x",
                                   (unsigned char)*c);
            }
        const char *q = buf;
        while (*q && isspace((unsigned char)*q))
            q++;
        if (*q) {
            script_line line;
            if (parse_line(&line, source, line_no, q, limits, last_step, err,
                           err_size) < 0) {
                script_free(&parsed);
                return -1;
            }
            if (grow(&parsed) < 0) {
                script_free(&parsed);
                return script_fail(err, err_size, source, line_no,
                                   "out of memory");
            }
            parsed.lines[parsed.count++] = line;
        }
        p = end ? end + 1 : p + len;
    }
    script_free(s);
    *s = parsed;
    return 0;
}

int script_load(script *s, const char *path, const command_limits *limits,
                int last_step, char *err, size_t err_size)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, err_size, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    size_t cap = 4096, size = 0;
    char *text = malloc(cap + 1);
    while (text) {
        size += fread(text + size, 1, cap - size, f);
        if (size < cap || cap >= ((size_t)16 << 20))
            break;
        cap *= 2;
        char *bigger = realloc(text, cap + 1);
        if (!bigger) {
            free(text);
            text = NULL;
            break;
        }
        text = bigger;
    }
    int failed = ferror(f);
    fclose(f);
    if (!text || failed || size == cap) {
        free(text);
        snprintf(err, err_size, "%s: %s", path,
                 !text ? "out of memory" : failed ? "cannot read"
                                                  : "too large (over 16 MiB)");
        return -1;
    }
    text[size] = '\0';
    if (memchr(text, '\0', size)) {
        free(text);
        snprintf(err, err_size, "%s: not a text file (it holds a NUL byte)",
                 path);
        return -1;
    }
    int rc = script_parse(s, path, text, limits, last_step, err, err_size);
    free(text);
    return rc;
}

void script_values(double *v, const step_stats *st, double val_loss)
{
    for (int m = 0; m < SCRIPT_METRIC_COUNT; m++)
        v[m] = NAN;
    v[SCRIPT_METRIC_step] = st->step;
    v[SCRIPT_METRIC_loss] = st->loss;
    v[SCRIPT_METRIC_val_loss] = val_loss;
    v[SCRIPT_METRIC_lr] = st->lr;
    v[SCRIPT_METRIC_grad_norm] = st->grad_norm;
    v[SCRIPT_METRIC_tokens_per_s] = st->tokens_per_s;
    v[SCRIPT_METRIC_step_ms] = st->step_s * 1e3;
    v[SCRIPT_METRIC_mfu] = st->mfu;
    v[SCRIPT_METRIC_cost_per_mtok] = st->cost_per_mtok;
    v[SCRIPT_METRIC_ideal_share] = metrics_ideal_share(st);
    v[SCRIPT_METRIC_dropped] = st->dropped;
    v[SCRIPT_METRIC_spikes] = st->spikes;
    if (!st->expert_load)
        return;
    /* The step record's figures (the worst layer), not a second formula. */
    double max_mean = 0, cv = 0, dead = 0;
    for (int l = 0; l < st->layers; l++) {
        metrics_imbalance m;
        metrics_layer_imbalance(st->expert_load + (size_t)l * st->experts,
                                st->experts, &m);
        if (isfinite(m.max_mean)) {
            max_mean = fmax(max_mean, m.max_mean);
            cv = fmax(cv, m.cv);
        }
        dead += m.dead;
    }
    v[SCRIPT_METRIC_max_mean] = max_mean;
    v[SCRIPT_METRIC_cv] = cv;
    v[SCRIPT_METRIC_dead] = dead;
}

static int holds(script_op op, double x, double value)
{
    if (!isfinite(x))
        return 0;
    switch (op) {
    case SCRIPT_LT: return x < value;
    case SCRIPT_LE: return x <= value;
    case SCRIPT_GT: return x > value;
    case SCRIPT_GE: return x >= value;
    case SCRIPT_EQ: return x == value;
    case SCRIPT_NE: return x != value;
    }
    return 0;
}

const command *script_command(const script *s, int i)
{
    return &s->lines[i].cmd;
}

int script_due(script *s, int step, const double *values, int *due_lines)
{
    int n = 0;
    for (int i = 0; i < s->count; i++) {
        const script_line *l = &s->lines[i];
        int due = 0;
        switch (l->kind) {
        case SCRIPT_AT:
            due = l->step == step;
            break;
        case SCRIPT_EVERY:
            due = step > 0 && step % l->every == 0;
            break;
        case SCRIPT_WHEN:
            if (values) {
                int now = holds(l->op, values[l->metric], l->value);
                due = now && !s->was_true[i];
                s->was_true[i] = (unsigned char)now;
            }
            break;
        }
        if (due)
            due_lines[n++] = i;
    }
    return n;
}
