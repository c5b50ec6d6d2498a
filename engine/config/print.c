/* Printing: the schema's tables, as YAML that loads back to the same
 * struct. */
#include "engine/config/config.h"

#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine/config/config_internal.h"

static bool plain_safe(const char *s)
{
    static const char *const reserved[] = {
        "null", "true", "false", "yes", "no", "on", "off", "y", "n", NULL,
    };
    char c = s[0];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
          c == '/'))
        return false;
    if (!text_all_of(s, strlen(s),
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

void print_leaf(FILE *out, const schema_field *f, const unsigned char *base)
{
    const unsigned char *field = base + f->offset;
    switch (f->kind) {
    case FIELD_INT: {
        int v;
        memcpy(&v, field, sizeof v);
        fprintf(out, "%d", v);
        break;
    }
    case FIELD_U64: {
        uint64_t v;
        memcpy(&v, field, sizeof v);
        fprintf(out, "%" PRIu64, v);
        break;
    }
    case FIELD_DOUBLE: {
        double v;
        memcpy(&v, field, sizeof v);
        print_double(out, v);
        break;
    }
    case FIELD_STRING:
        print_string(out, (const char *)field);
        break;
    case FIELD_ENUM: {
        int v, count = 0;
        memcpy(&v, field, sizeof v);
        while (f->names[count])
            count++;
        if (v >= 0 && v < count)
            fputs(f->names[v], out);
        else
            fprintf(out, "%d # not a valid value", v);
        break;
    }
    case FIELD_SECTION:
    case FIELD_SEQUENCE:
        break; /* not leaves: print_field walks them */
    }
}

static void print_field(FILE *out, const schema_field *f,
                        const unsigned char *base, int indent)
{
    fprintf(out, "%s:", f->key);
    if (f->kind == FIELD_SECTION) {
        fputc('\n', out);
        print_fields(out, f->children, base, indent + 2, false);
    } else if (f->kind == FIELD_SEQUENCE) {
        int count;
        memcpy(&count, base + f->count_offset, sizeof count);
        fputc('\n', out);
        for (int i = 0; i < count; i++)
            print_fields(out, f->children,
                         base + f->offset + (size_t)i * f->item_size,
                         indent + 4, true);
    } else {
        fputc(' ', out);
        print_leaf(out, f, base);
        fputc('\n', out);
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
    for (const schema_field *f = schema_root_fields; f->key; f++) {
        if (f != schema_root_fields)
            fputc('\n', out);
        print_field(out, f, (const unsigned char *)cfg, 0);
    }
}
