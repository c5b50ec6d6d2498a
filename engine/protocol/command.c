#include "engine/protocol/command.h"
#include "engine/config/config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The command's name, the most arguments any command takes (split: l.e
 * and a rank, then up to COMMAND_SPLIT_MAX rank:weight; shares: one weight
 * a rank), and one word more: the first extra one is reported, or, when
 * the arguments are all there, the end marker. */
enum {
    ARGS_MAX = 2 + COMMAND_SPLIT_MAX > CONFIG_MAX_DEVICES
                   ? 2 + COMMAND_SPLIT_MAX : CONFIG_MAX_DEVICES,
    WORDS_MAX = 1 + ARGS_MAX + 1,
    QUOTE_MAX = 40
};
_Static_assert(5 * CONFIG_MAX_DEVICES + 8 <= COMMAND_TEXT_MAX &&
                   8 + 11 * (COMMAND_SPLIT_MAX + 1) <= COMMAND_TEXT_MAX,
               "COMMAND_TEXT_MAX holds the longest shares and split");

typedef struct word {
    const char *text;   /* not NUL-terminated at len */
    size_t len;
} word;

typedef int (*command_args_fn)(const word *args, const command_limits *limits,
                               command *out, char *reason, size_t reason_size);

static int command_parse_lr(const word *args, const command_limits *limits,
                            command *out, char *reason, size_t reason_size);
static int command_parse_move(const word *args, const command_limits *limits,
                              command *out, char *reason, size_t reason_size);
static int command_parse_policy(const word *args, const command_limits *limits,
                                command *out, char *reason,
                                size_t reason_size);
static int command_parse_split(const word *args, const command_limits *limits,
                               command *out, char *reason, size_t reason_size);
static int command_parse_shares(const word *args,
                                const command_limits *limits, command *out,
                                char *reason, size_t reason_size);

static const struct command_spec {
    const char *name;
    command_kind kind;
    int n_args;     /* at least */
    int max_args;   /* at most */
    const char *usage;
    command_args_fn parse_args;   /* NULL when n_args is 0 */
} command_specs[] = {
    {"pause", COMMAND_PAUSE, 0, 0, "pause", NULL},
    {"resume", COMMAND_RESUME, 0, 0, "resume", NULL},
    {"stop", COMMAND_STOP, 0, 0, "stop", NULL},
    {"checkpoint", COMMAND_CHECKPOINT, 0, 0, "checkpoint", NULL},
    {"status", COMMAND_STATUS, 0, 0, "status", NULL},
    {"lr", COMMAND_LR, 1, 1, "lr VALUE", command_parse_lr},
    {"move", COMMAND_MOVE, 2, 2, "move L.E R", command_parse_move},
    {"plan", COMMAND_PLAN, 0, 0, "plan", NULL},
    {"apply", COMMAND_APPLY, 0, 0, "apply", NULL},
    {"policy", COMMAND_POLICY, 1, 5,
     "policy off|suggest|auto [every N] [min-gain X]", command_parse_policy},
    {"split", COMMAND_SPLIT, 2, 1 + COMMAND_SPLIT_MAX, "split L.E R[:W] ...",
     command_parse_split},
    {"shares", COMMAND_SHARES, 1, CONFIG_MAX_DEVICES, "shares W0 W1 ...",
     command_parse_shares},
};
enum { COMMAND_SPECS = sizeof command_specs / sizeof command_specs[0] };

static const char command_list[] =
    "pause, resume, stop, checkpoint, status, lr VALUE, move L.E R, plan, "
    "apply, policy off|suggest|auto [every N] [min-gain X], "
    "split L.E R[:W] ..., shares W0 W1 ...";

static int command_fail(char *reason, size_t reason_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int command_fail(char *reason, size_t reason_size, const char *fmt, ...)
{
    if (reason && reason_size > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(reason, reason_size, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* A word as it may appear inside a reason: cut to QUOTE_MAX bytes, with
 * control and non-ASCII bytes shown as '?', because the line may come from
 * any client and the reason goes to a terminal and into JSON. */
static const char *command_quote(const word *w, char *buf, size_t size)
{
    size_t n = w->len < QUOTE_MAX ? w->len : QUOTE_MAX;
    if (n > size - 4)
        n = size - 4;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)w->text[i];
        buf[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    if (n < w->len)
        memcpy(buf + n, "...", 4);
    else
        buf[n] = '\0';
    return buf;
}

/* Splits at blanks; returns the number of words (all of them, although only
 * the first WORDS_MAX are stored). */
static int command_split(const char *line, word *words)
{
    int n = 0;
    const char *p = line;
    for (;;) {
        while (*p && isspace((unsigned char)*p))
            p++;
        if (!*p)
            return n;
        const char *start = p;
        while (*p && !isspace((unsigned char)*p))
            p++;
        if (n < WORDS_MAX)
            words[n] = (word){start, (size_t)(p - start)};
        n++;
    }
}

static int word_is(const word *w, const char *s)
{
    return strlen(s) == w->len && memcmp(w->text, s, w->len) == 0;
}

/* The grammar's numbers use '.' whatever the console's locale says. */
static double command_strtod(const char *s, char **end)
{
    locale_t c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (!c_locale)
        return strtod(s, end);
    locale_t previous = uselocale(c_locale);
    double v = strtod(s, end);
    uselocale(previous);
    freelocale(c_locale);
    return v;
}

static int command_parse_lr(const word *args, const command_limits *limits,
                            command *out, char *reason, size_t reason_size)
{
    char quoted[QUOTE_MAX + 4];
    const word *w = &args[0];
    char *end;
    errno = 0;
    double v = command_strtod(w->text, &end);
    if (end == w->text || end != w->text + w->len)
        return command_fail(reason, reason_size,
                            "lr: expected a number, got \"%s\"",
                            command_quote(w, quoted, sizeof quoted));
    if (errno == ERANGE || !isfinite(v) || !(v > 0) || v > 1)
        return command_fail(reason, reason_size,
                            "lr: %s is out of range (0 < VALUE <= 1)",
                            command_quote(w, quoted, sizeof quoted));
    out->value = v;
    return 0;
}

/* A decimal integer: an optional '-' and digits (no '+', no blanks). Sets
 * *end after it; overflow saturates, which the range check then rejects. */
static int command_strtoi(const char *s, const char **end, long *value)
{
    const char *digits = s[0] == '-' ? s + 1 : s;
    if (!isdigit((unsigned char)digits[0]))
        return -1;
    char *e;
    errno = 0;
    *value = strtol(s, &e, 10);
    *end = e;
    return 0;
}

static int command_check_index(const char *name, const char *what,
                               const word *text, long value, int count,
                               char *reason, size_t reason_size)
{
    if (value >= 0 && value < count)
        return 0;
    char quoted[QUOTE_MAX + 4];
    command_quote(text, quoted, sizeof quoted);
    if (count <= 0)
        return command_fail(reason, reason_size,
                            "%s: %s %s is out of range (there are no %ss)",
                            name, what, quoted, what);
    return command_fail(reason, reason_size,
                        "%s: %s %s is out of range (0..%d)", name, what,
                        quoted, count - 1);
}

/* L.E: a layer and an expert, each in range. */
static int command_parse_cell(const char *name, const word *cell,
                              const command_limits *limits, command *out,
                              char *reason, size_t reason_size)
{
    char quoted[QUOTE_MAX + 4];
    const char *cell_end = cell->text + cell->len;
    long layer, expert;
    const char *p, *e;
    if (command_strtoi(cell->text, &p, &layer) < 0 || *p != '.' ||
        command_strtoi(p + 1, &e, &expert) < 0 || e != cell_end)
        return command_fail(reason, reason_size,
                            "%s: expected L.E, got \"%s\"", name,
                            command_quote(cell, quoted, sizeof quoted));
    const word layer_text = {cell->text, (size_t)(p - cell->text)};
    const word expert_text = {p + 1, (size_t)(cell_end - (p + 1))};
    if (command_check_index(name, "layer", &layer_text, layer,
                            limits ? limits->layers : INT_MAX, reason,
                            reason_size) < 0 ||
        command_check_index(name, "expert", &expert_text, expert,
                            limits ? limits->experts : INT_MAX, reason,
                            reason_size) < 0)
        return -1;
    out->layer = (int)layer;
    out->expert = (int)expert;
    return 0;
}

static int command_parse_move(const word *args, const command_limits *limits,
                              command *out, char *reason, size_t reason_size)
{
    char quoted[QUOTE_MAX + 4];
    const word *target = &args[1];
    long rank;
    const char *e;
    if (command_parse_cell("move", &args[0], limits, out, reason,
                           reason_size) < 0)
        return -1;
    if (command_strtoi(target->text, &e, &rank) < 0 ||
        e != target->text + target->len)
        return command_fail(reason, reason_size,
                            "move: expected a rank R (an integer), got \"%s\"",
                            command_quote(target, quoted, sizeof quoted));
    if (command_check_index("move", "rank", target, rank,
                            limits ? limits->ranks : INT_MAX, reason,
                            reason_size) < 0)
        return -1;
    out->rank = (int)rank;
    return 0;
}

/* split L.E R[:W] ...: the expert's rows shared among the ranks named, in
 * proportion to the weights W (1..1000, default 1); the first rank named
 * becomes the expert's rank. args ends with a NULL-text word. */
static int command_parse_split(const word *args, const command_limits *limits,
                               command *out, char *reason, size_t reason_size)
{
    char quoted[QUOTE_MAX + 4];
    if (command_parse_cell("split", &args[0], limits, out, reason,
                           reason_size) < 0)
        return -1;
    out->split_count = 0;
    for (const word *w = &args[1]; w->text; w++) {
        const char *end = w->text + w->len, *e;
        long rank, weight = 1;
        if (command_strtoi(w->text, &e, &rank) < 0 ||
            (e != end && (*e != ':' || command_strtoi(e + 1, &e, &weight) < 0 ||
                          e != end)))
            return command_fail(reason, reason_size,
                                "split: expected R or R:W (a rank and an "
                                "integer weight), got \"%s\"",
                                command_quote(w, quoted, sizeof quoted));
        const char *colon = memchr(w->text, ':', w->len);
        const word rank_text = {w->text, colon ? (size_t)(colon - w->text)
                                               : w->len};
        if (command_check_index("split", "rank", &rank_text, rank,
                                limits ? limits->ranks : INT_MAX, reason,
                                reason_size) < 0)
            return -1;
        if (weight < 1 || weight > 1000)
            return command_fail(reason, reason_size,
                                "split: weight in \"%s\" is out of range "
                                "(1..1000)",
                                command_quote(w, quoted, sizeof quoted));
        for (int i = 0; i < out->split_count; i++)
            if (out->split_rank[i] == rank)
                return command_fail(reason, reason_size,
                                    "split: rank %ld is named twice", rank);
        out->split_rank[out->split_count] = (int)rank;
        out->split_weight[out->split_count++] = (int)weight;
    }
    out->rank = out->split_rank[0];
    return 0;
}


/* shares W0 W1 ...: one integer weight (1..1000) a rank, in rank order;
 * the global batch is split over the ranks in proportion. */
static int command_parse_shares(const word *args,
                                const command_limits *limits, command *out,
                                char *reason, size_t reason_size)
{
    char quoted[QUOTE_MAX + 4];
    out->share_count = 0;
    for (const word *w = args; w->text; w++) {
        const char *e;
        long weight;
        if (command_strtoi(w->text, &e, &weight) < 0 ||
            e != w->text + w->len || weight < 1 || weight > 1000)
            return command_fail(reason, reason_size,
                                "shares: expected an integer weight 1..1000 "
                                "a rank, got \"%s\"",
                                command_quote(w, quoted, sizeof quoted));
        out->share_weight[out->share_count++] = (int)weight;
    }
    if (limits && out->share_count != limits->ranks)
        return command_fail(reason, reason_size,
                            "shares: the job has %d rank(s), one weight "
                            "each; got %d", limits->ranks, out->share_count);
    return 0;
}

/* policy off|suggest|auto [every N] [min-gain X]: X a fraction (0.05) or a
 * percentage (5%). args ends with a NULL-text word. */
static int command_parse_policy(const word *args, const command_limits *limits,
                                command *out, char *reason,
                                size_t reason_size)
{
    (void)limits;
    char quoted[QUOTE_MAX + 4];
    int policy = -1;
    for (int i = 0; config_policy_names[i]; i++)
        if (word_is(&args[0], config_policy_names[i]))
            policy = i;
    if (policy < 0)
        return command_fail(reason, reason_size,
                            "policy: expected off, suggest or auto, got "
                            "\"%s\"",
                            command_quote(&args[0], quoted, sizeof quoted));
    out->policy = (config_policy)policy;
    out->every = 0;
    out->min_gain = -1;
    for (const word *w = &args[1]; w->text; w += 2) {
        const word *value = &w[1];
        int every = word_is(w, "every"), gain = word_is(w, "min-gain");
        if (!every && !gain)
            return command_fail(reason, reason_size,
                                "policy: expected \"every N\" or \"min-gain "
                                "X\", got \"%s\"",
                                command_quote(w, quoted, sizeof quoted));
        if (!value->text)
            return command_fail(reason, reason_size, "policy: %s needs a "
                                "value (usage: policy off|suggest|auto "
                                "[every N] [min-gain X])",
                                every ? "every" : "min-gain");
        const char *end = value->text + value->len;
        if (every) {
            long n;
            const char *e;
            if (command_strtoi(value->text, &e, &n) < 0 || e != end ||
                n < 1 || n > 1000000000)
                return command_fail(reason, reason_size,
                                    "policy: every expects a step count "
                                    "(1..1000000000), got \"%s\"",
                                    command_quote(value, quoted,
                                                  sizeof quoted));
            out->every = (int)n;
        } else {
            char *e;
            double x = command_strtod(value->text, &e);
            if (e == value->text) {
                x = NAN;
            } else if (e < end && *e == '%') {
                x /= 100;
                e++;
            }
            if (e != end || !(x >= 0 && x < 1))
                return command_fail(reason, reason_size,
                                    "policy: min-gain expects a fraction of "
                                    "a step, 0 <= X < 1 (like 0.05 or 5%%), "
                                    "got \"%s\"",
                                    command_quote(value, quoted,
                                                  sizeof quoted));
            out->min_gain = x;
        }
    }
    return 0;
}

/* The usage words after the name, from the first one not given. */
static const char *command_missing(const struct command_spec *spec, int given)
{
    const char *p = spec->usage;
    for (int skip = 0; skip <= given; skip++) {
        p = strchr(p, ' ');
        if (!p)
            return "";
        p++;
    }
    return p;
}

int command_parse(const char *line, const command_limits *limits,
                  command *out, char *reason, size_t reason_size)
{
    word words[WORDS_MAX];
    char quoted[QUOTE_MAX + 4];
    int n = command_split(line, words);
    if (n == 0)
        return command_fail(reason, reason_size, "empty command");

    const struct command_spec *spec = NULL;
    for (int i = 0; i < COMMAND_SPECS; i++)
        if (word_is(&words[0], command_specs[i].name))
            spec = &command_specs[i];
    if (!spec)
        return command_fail(reason, reason_size,
                            "unknown command \"%s\" (commands: %s)",
                            command_quote(&words[0], quoted, sizeof quoted),
                            command_list);

    int given = n - 1;
    if (given < spec->n_args)
        return command_fail(reason, reason_size, "%s: missing %s (usage: %s)",
                            spec->name, command_missing(spec, given),
                            spec->usage);
    if (given > spec->max_args)
        return command_fail(
            reason, reason_size, "%s: unexpected argument \"%s\" (usage: %s)",
            spec->name,
            command_quote(&words[1 + spec->max_args], quoted, sizeof quoted),
            spec->usage);
    if (given < WORDS_MAX - 1)
        words[1 + given] = (word){NULL, 0};

    command parsed = {.kind = spec->kind};
    if (spec->parse_args &&
        spec->parse_args(&words[1], limits, &parsed, reason, reason_size) < 0)
        return -1;
    *out = parsed;
    return 0;
}

/* A number as the parser reads it back to the same double: the shortest
 * %g of 6, 9, 12 or 17 digits that does, in the C locale whatever the
 * process's (0.9999999 stays that, not a 1 that min-gain refuses). */
static void format_number(char *out, size_t size, double x)
{
    locale_t c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    locale_t previous = c_locale ? uselocale(c_locale) : (locale_t)0;
    static const int digits[] = {6, 9, 12, 17};
    for (size_t i = 0; i < sizeof digits / sizeof *digits; i++) {
        snprintf(out, size, "%.*g", digits[i], x);
        if (strtod(out, NULL) == x)
            break;
    }
    if (c_locale) {
        uselocale(previous);
        freelocale(c_locale);
    }
}

void command_format(const command *c, char *out, size_t size)
{
    if (size == 0)
        return;
    const char *name = "unknown";
    for (int i = 0; i < COMMAND_SPECS; i++)
        if (command_specs[i].kind == c->kind)
            name = command_specs[i].name;
    switch (c->kind) {
    case COMMAND_LR: {
        char number[32];
        format_number(number, sizeof number, c->value);
        snprintf(out, size, "%s %s", name, number);
        break;
    }
    case COMMAND_MOVE:
        snprintf(out, size, "%s %d.%d %d", name, c->layer, c->expert, c->rank);
        break;
    case COMMAND_SPLIT: {
        int n = snprintf(out, size, "%s %d.%d", name, c->layer, c->expert);
        for (int i = 0; i < c->split_count && n >= 0 && (size_t)n < size; i++)
            n += snprintf(out + n, size - (size_t)n, " %d:%d",
                          c->split_rank[i], c->split_weight[i]);
        break;
    }
    case COMMAND_SHARES: {
        int n = snprintf(out, size, "%s", name);
        for (int i = 0; i < c->share_count && n >= 0 && (size_t)n < size; i++)
            n += snprintf(out + n, size - (size_t)n, " %d", c->share_weight[i]);
        break;
    }
    case COMMAND_POLICY: {
        int n = snprintf(out, size, "%s %s", name,
                         c->policy <= CONFIG_POLICY_AUTO
                             ? config_policy_names[c->policy] : "?");
        if (c->every > 0 && n >= 0 && (size_t)n < size)
            n += snprintf(out + n, size - (size_t)n, " every %d", c->every);
        if (c->min_gain >= 0 && n >= 0 && (size_t)n < size) {
            char number[32];
            format_number(number, sizeof number, c->min_gain);
            snprintf(out + n, size - (size_t)n, " min-gain %s", number);
        }
        break;
    }
    default:
        snprintf(out, size, "%s", name);
        break;
    }
}
