/* Internals shared by the files of engine/config: the schema's types, the
 * load context and the functions one part of the loader offers another.
 * Only the files in engine/config include this; everyone else uses
 * config.h. */
#ifndef MOECTL_ENGINE_CONFIG_INTERNAL_H
#define MOECTL_ENGINE_CONFIG_INTERNAL_H

#include <float.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <yaml.h>

#include "engine/config/config.h"

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

/* One key of the schema. Its default, unit and meaning live here too: the
 * defaults (config_defaults), the reference (config_describe) and the
 * loader all read this one table. */
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
    /* The default: FIELD_INT, FIELD_DOUBLE and FIELD_U64 (exact in a
     * double) their value, FIELD_ENUM its index in names, FIELD_SEQUENCE
     * its number of items (each item the children's defaults). */
    double default_number;
    const char *default_text;   /* FIELD_STRING; NULL: "" */
    const char *unit;           /* of a number ("GB/s", "steps"); or NULL */
    const char *about;          /* what the key means, one sentence or two */
};

/* The offset of a config member, as the schema and the checks name it. */
#define CFG(member) offsetof(config, member)

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

typedef struct load_ctx {
    config *cfg;
    moe_error *err;
    const char *source; /* the input being read now */
    const char *text;
    size_t length;
    /* Columns before the YAML being read on its first line (a --set value
     * sits after its key): added to marks on line 0. */
    size_t mark_shift;
    key_mark marks[MARKS_MAX];
    int mark_count;
    unsigned long order;
} load_ctx;

static inline bool utf8_is_continuation(unsigned char c)
{
    return (c & 0xC0) == 0x80;
}

/* Whether each of the n bytes of s is one of allowed (and not NUL). */
static inline bool text_all_of(const char *s, size_t n, const char *allowed)
{
    for (size_t i = 0; i < n; i++)
        if (!s[i] || !strchr(allowed, s[i]))
            return false;
    return true;
}

/* schema.c: the tables. */
extern const schema_field schema_root_fields[];
const schema_field *schema_find_field(const schema_field *fields,
                                      const char *key, size_t length);
/* "a, b, c": the keys of fields. */
void schema_list_keys(const schema_field *fields, char *buf, size_t size);
/* Formats a key path into out[PATH_LEN]; schema paths always fit. */
void schema_format_path(char *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void schema_join_path(char *out, const char *path, const char *key);
/* Sets every leaf under fields, within base, to its default. */
void schema_set_defaults(const schema_field *fields, unsigned char *base);

/* diagnostics.c: error reports. */
size_t diag_utf8_chars(const char *s, size_t n);
/* Reports `at: message`, the line and a caret; without a place, reports
 * `source: message`. Returns -1. */
int diag_fail_at(load_ctx *ctx, const where *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
where diag_where_mark(const load_ctx *ctx, yaml_mark_t mark);
/* Quotes text for a message: at most SHOW_MAX bytes, control characters
 * and bytes that are not UTF-8 as '?'. */
const char *diag_show(const char *text, size_t length, bool quoted,
                      char *buf, size_t size);
/* "a mapping", "a sequence", "an empty value" or the quoted scalar. */
const char *diag_describe_node(const yaml_node_t *node, char *buf,
                               size_t size);
/* An unknown key or section: a suggestion when one is close, else the
 * list of valid keys. Returns -1. */
int diag_fail_unknown_key(load_ctx *ctx, const where *at, const char *path,
                          const schema_field *fields, const char *key,
                          size_t length);

/* leaf.c: scalars. */
/* "an integer", "one of a, b", ...: what f accepts. */
const char *leaf_expectation(const schema_field *f, char *buf, size_t size);
/* "1..256", "> 0", "0..1 and < 1"...: the range f accepts. */
void leaf_range_text(const schema_field *f, char *buf, size_t size);
/* Sets one leaf from a scalar node (NULL: an empty value). */
int leaf_set(load_ctx *ctx, const schema_field *f, unsigned char *base,
             const char *path, const yaml_node_t *node, const where *at);

/* document.c: the YAML document. */
/* Reports libyaml's error. The parser read ctx->text from `offset` on (a
 * --set value sits after its key), so its first line is shifted. */
int document_fail_yaml(load_ctx *ctx, const yaml_parser_t *parser,
                       size_t offset);
/* Reads ctx->text, one YAML document, into ctx->cfg. */
/* A sequence node as the whole list f (its entries replace the old ones),
 * or appended to it (a mapping node: one entry; a sequence: several). */
int document_set_sequence(load_ctx *ctx, yaml_document_t *doc,
                          yaml_node_t *node, const schema_field *f,
                          unsigned char *base, const char *path, bool append);
int document_load(load_ctx *ctx);

/* overrides.c: one --set argument. */
int overrides_apply(load_ctx *ctx, const char *arg);

/* print.c: the printer. */
/* Writes the value of the leaf f within base as YAML that reads back to
 * it (no key, no newline). */
void print_leaf(FILE *out, const schema_field *f, const unsigned char *base);

/* checks.c: cross-field checks. */
/* Remembers where the top-level leaf at offset was set, so that a
 * cross-field error points at the later of its two keys. */
void checks_record_mark(load_ctx *ctx, size_t offset, const char *path,
                        const where *at);
int checks_cross_fields(load_ctx *ctx);
/* A failure about one key, reported where it was set (or without a place
 * when it kept its default). Returns the failure's status. */
int checks_fail_key(load_ctx *ctx, size_t offset, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Refuses ctx->text from `offset` on when its flow collections nest
 * deeper than CONFIG_NESTING_MAX (quoted text and comments aside): 0, or
 * the failure's status, pointing at the bracket past the limit. */
int diag_check_nesting(load_ctx *ctx, size_t offset);
/* files.c: what a run needs of the file system (config_load_for_run). */
int checks_files(load_ctx *ctx);

#endif
