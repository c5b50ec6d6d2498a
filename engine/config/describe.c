/* The configuration reference, generated from the schema: every key with
 * its type, range or choices, unit, default and meaning, as plain text
 * (`moectl check --describe`) or as the roff page moectl-config(5). */
#include "engine/config/config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/config/config_internal.h"
#include "moectl_build.h"

#define TEXT_WIDTH 78   /* columns of the plain-text reference */
#define ABOUT_INDENT 4  /* of a key's meaning under it */

typedef struct describer {
    FILE *out;
    config_describe_format format;
} describer;

static const char text_preface[] =
    "moectl configuration keys. A configuration is one YAML document: a\n"
    "mapping of the sections below. Keys left out keep the default shown\n"
    "(configs/default.yaml states the same run); --set KEY=VALUE overrides\n"
    "one key after the file, a device's as cluster.devices.N.KEY or\n"
    "cluster.devices[N].KEY. Each key: its type and range (unit), default,\n"
    "and meaning.\n";

static const char man_head[] =
    ".TH MOECTL-CONFIG 5 \"\" \"moectl " MOECTL_VERSION "\" \"File Formats\"\n"
    ".nh\n"
    ".ad l\n"
    ".SH NAME\n"
    "moectl-config \\- the run configuration of moectl\n"
    ".SH SYNOPSIS\n"
    ".B moectl check\n"
    ".I CONFIG\n"
    ".RB [ \\-\\-set\n"
    ".IR KEY = VALUE ]...\n"
    ".br\n"
    ".B moectl check \\-\\-describe\\fR[\\fB=man\\fR]\n"
    ".SH DESCRIPTION\n"
    "A configuration is one YAML document: a mapping of the sections\n"
    "listed under CONFIGURATION.\n"
    "Unknown keys, wrong types, values out of range and cross-field\n"
    "conflicts are errors; each reads\n"
    ".IR file : line : column :\n"
    "message, then the source line with a caret under the column, and\n"
    "nothing starts (exit status 2).\n"
    ".PP\n"
    "Keys left out keep their defaults, listed below; configs/default.yaml\n"
    "states the same run and is built into moectl, which runs it when\n"
    "given no file.\n"
    ".B \\-\\-set\n"
    ".IR KEY = VALUE\n"
    "overrides one key after the file; KEY is the dotted path shown below,\n"
    "a device's as cluster.devices.N.KEY or cluster.devices[N].KEY.\n"
    ".B moectl check\n"
    "prints the resolved configuration.\n"
    ".SH CONFIGURATION\n";

static const char man_tail[] =
    ".SH SEE ALSO\n"
    ".B moectl \\-\\-help\n"
    ".PP\n"
    "This page is generated from the schema in engine/config/schema.c by\n"
    ".BR \"moectl check \\-\\-describe=man\" .\n";

/* Writes s for roff: backslashes and minus signs escaped, and a leading
 * '.' or '\'' kept from reading as a request. */
static void write_roff(FILE *out, const char *s)
{
    if (s[0] == '.' || s[0] == '\'')
        fputs("\\&", out);
    for (; *s; s++) {
        if (*s == '\\')
            fputs("\\e", out);
        else if (*s == '-')
            fputs("\\-", out);
        else
            fputc(*s, out);
    }
}

/* Writes text wrapped at TEXT_WIDTH, each line indented by indent. */
static void write_wrapped(FILE *out, const char *text, int indent)
{
    const char *p = text;
    while (*p) {
        size_t room = (size_t)(TEXT_WIDTH - indent), n = strlen(p);
        if (n > room) {
            n = room;
            while (n > 0 && p[n] != ' ')
                n--;
            if (n == 0) /* one word longer than the line */
                n = strcspn(p, " ");
        }
        fprintf(out, "%*s%.*s\n", indent, "", (int)n, p);
        p += n;
        while (*p == ' ')
            p++;
    }
}

/* "integer 2..65536 (tokens)", "one of cpu, cuda, hip", ...; the string
 * a key's value must be. */
static void type_text(const schema_field *f, char *buf, size_t size)
{
    char range[96];
    leaf_range_text(f, range, sizeof range);
    int n = 0;
    switch (f->kind) {
    case FIELD_INT:
        n = snprintf(buf, size, "integer %s", range);
        break;
    case FIELD_U64:
        n = snprintf(buf, size, "unsigned integer %s", range);
        break;
    case FIELD_DOUBLE:
        n = snprintf(buf, size, "number %s", range);
        break;
    case FIELD_STRING:
        n = snprintf(buf, size, "string of %.0f..%.0f bytes", f->min,
                     f->max);
        break;
    case FIELD_ENUM:
        leaf_expectation(f, buf, size);
        n = (int)strlen(buf);
        break;
    case FIELD_SECTION:
        n = snprintf(buf, size, "section");
        break;
    case FIELD_SEQUENCE:
        n = snprintf(buf, size, "sequence of %.0f..%.0f mappings", f->min,
                     f->max);
        break;
    }
    if (f->unit && n > 0 && (size_t)n < size)
        snprintf(buf + n, size - (size_t)n, " (%s)", f->unit);
}

/* The default as it loads: the value config_defaults() leaves in base, or
 * for a sequence its number of entries. */
static void default_text(const schema_field *f, const unsigned char *base,
                         char *buf, size_t size)
{
    if (f->kind == FIELD_SEQUENCE) {
        int count;
        memcpy(&count, base + f->count_offset, sizeof count);
        snprintf(buf, size, "%d %s", count, count == 1 ? "entry" : "entries");
        return;
    }
    FILE *mem = fmemopen(buf, size, "w");
    if (!mem) {
        snprintf(buf, size, "?");
        return;
    }
    print_leaf(mem, f, base);
    fclose(mem);
}

static void describe_key(const describer *d, const char *path,
                         const schema_field *f, const unsigned char *base)
{
    char type[256], value[CONFIG_PATH_MAX + 16];
    type_text(f, type, sizeof type);
    default_text(f, base, value, sizeof value);
    if (d->format == CONFIG_DESCRIBE_TEXT) {
        fprintf(d->out, "%s\n    %s; default: %s\n", path, type, value);
        write_wrapped(d->out, f->about, ABOUT_INDENT);
        return;
    }
    fputs(".TP\n.B ", d->out);
    write_roff(d->out, path);
    fputc('\n', d->out);
    write_roff(d->out, type);
    fputs("; default: ", d->out);
    write_roff(d->out, value);
    fputs("\n.br\n", d->out);
    write_roff(d->out, f->about);
    fputc('\n', d->out);
}

static int describe_fields(const describer *d, const char *path,
                           const schema_field *fields,
                           const unsigned char *base);

/* A sequence, then the keys of one entry as PATH[].KEY, with the defaults
 * an entry starts from. */
static int describe_sequence(const describer *d, const char *path,
                             const schema_field *f, const unsigned char *base)
{
    describe_key(d, path, f, base);
    unsigned char *item = calloc(1, f->item_size);
    if (!item)
        return -1;
    schema_set_defaults(f->children, item);
    char item_path[PATH_LEN];
    schema_format_path(item_path, "%s[]", path);
    int rc = describe_fields(d, item_path, f->children, item);
    free(item);
    return rc;
}

static int describe_fields(const describer *d, const char *path,
                           const schema_field *fields,
                           const unsigned char *base)
{
    for (const schema_field *f = fields; f->key; f++) {
        char child[PATH_LEN];
        schema_join_path(child, path, f->key);
        if (f->kind == FIELD_SECTION) {
            if (describe_fields(d, child, f->children, base))
                return -1;
        } else if (f->kind == FIELD_SEQUENCE) {
            if (describe_sequence(d, child, f, base))
                return -1;
        } else {
            describe_key(d, child, f, base);
        }
    }
    return 0;
}

static void describe_section(const describer *d, const schema_field *f)
{
    if (d->format == CONFIG_DESCRIBE_TEXT) {
        fprintf(d->out, "\n%s\n", f->key);
        write_wrapped(d->out, f->about, 2);
        fputc('\n', d->out);
        return;
    }
    fprintf(d->out, ".SS %s\n", f->key);
    write_roff(d->out, f->about);
    fputc('\n', d->out);
}

int config_describe(FILE *out, config_describe_format format)
{
    describer d = {out, format};
    config *defaults = malloc(sizeof *defaults);
    if (!defaults)
        return -1;
    config_defaults(defaults);
    fputs(format == CONFIG_DESCRIBE_TEXT ? text_preface : man_head, out);
    int rc = 0;
    for (const schema_field *f = schema_root_fields; f->key && rc == 0;
         f++) {
        describe_section(&d, f);
        rc = describe_fields(&d, f->key, f->children,
                             (const unsigned char *)defaults);
    }
    if (format == CONFIG_DESCRIBE_MAN)
        fputs(man_tail, out);
    free(defaults);
    if (rc == 0 && (fflush(out) != 0 || ferror(out)))
        rc = -1;
    return rc;
}
