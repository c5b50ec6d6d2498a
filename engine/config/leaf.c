/* Leaves: scalars parsed with an end pointer and a range check. */
#include "engine/config/config_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *leaf_expectation(const schema_field *f, char *buf, size_t size)
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

void leaf_range_text(const schema_field *f, char *buf, size_t size)
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
    if (n == digits_from || !text_all_of(s + digits_from, n - digits_from,
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
    if (!has_digit(s, n) || !text_all_of(s, n, "0123456789+-.eE"))
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
int leaf_set(load_ctx *ctx, const schema_field *f, unsigned char *base,
             const char *path, const yaml_node_t *node,
             const where *at)
{
    char expected[128], got[SHOW_BUF], range[96];
    if (node && node->type != YAML_SCALAR_NODE)
        return diag_fail_at(ctx, at, "%s: expected %s, got %s", path,
                            leaf_expectation(f, expected, sizeof expected),
                            diag_describe_node(node, got, sizeof got));
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
            return diag_fail_at(
                ctx, at, "%s: strings must not contain NUL bytes", path);
        if ((double)n > f->max)
            return diag_fail_at(
                ctx, at, "%s: string is too long (%zu bytes, at most %.0f)",
                path, n, f->max);
        if ((double)n < f->min)
            return diag_fail_at(ctx, at, "%s: expected a non-empty string",
                                path);
        memset(field, 0, (size_t)f->max + 1);
        memcpy(field, text, n);
        return 0;
    case FIELD_ENUM:
        for (int i = 0; f->names[i]; i++) {
            if (strlen(f->names[i]) == n &&
                memcmp(f->names[i], text, n) == 0) {
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
        return diag_fail_at(ctx, at, "%s: expected %s, got %s", path,
                            leaf_expectation(f, expected, sizeof expected),
                            diag_describe_node(node, got, sizeof got));
    if (status == OUT_OF_RANGE) {
        leaf_range_text(f, range, sizeof range);
        return diag_fail_at(ctx, at, "%s: %s is out of range (%s)", path,
                            diag_show(text, n, false, got, sizeof got), range);
    }
    return 0;
}
