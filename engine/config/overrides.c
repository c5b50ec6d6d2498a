/* --set overrides: `a.b=value`, `cluster.devices.N.key=value` or
 * `cluster.devices[N].key=value`, each value read as a YAML scalar; a
 * whole list, `cluster.devices=[{...}, ...]`, or entries appended to it,
 * `cluster.devices+={...}`, each value read as YAML (flow style) and
 * checked as a file's. */
#include "engine/config/config_internal.h"

#include <string.h>

/* Reads the --set value at value_offset as one YAML document into *doc
 * (the caller deletes it and the parser). Returns 0, or the failure's
 * status with the parser already deleted. */
static int load_value(load_ctx *ctx, size_t value_offset,
                      yaml_parser_t *parser, yaml_document_t *doc)
{
    int nested = diag_check_nesting(ctx, value_offset);
    if (nested)
        return nested;
    if (!yaml_parser_initialize(parser))
        return diag_fail_at(ctx, NULL, "out of memory while reading YAML");
    yaml_parser_set_input_string(parser,
                                 (const unsigned char *)ctx->text +
                                     value_offset,
                                 ctx->length - value_offset);
    if (!yaml_parser_load(parser, doc)) {
        int rc = document_fail_yaml(ctx, parser, value_offset);
        yaml_parser_delete(parser);
        return rc ? rc : -1;
    }
    return 0;
}

/* Parses a --set value as a YAML scalar and sets the leaf. */
static int set_value(load_ctx *ctx, const schema_field *f, unsigned char *base,
                     const char *path, size_t value_offset)
{
    size_t value_chars = diag_utf8_chars(ctx->text, value_offset);
    yaml_parser_t parser;
    yaml_document_t doc;
    int rc = load_value(ctx, value_offset, &parser, &doc);
    if (rc)
        return rc;
    yaml_node_t *node = yaml_document_get_root_node(&doc);
    where at = {ctx->source, ctx->text, ctx->length, 0, value_chars};
    if (node) {
        at.line = node->start_mark.line;
        at.column = node->start_mark.column +
                    (node->start_mark.line == 0 ? value_chars : 0);
    }
    rc = leaf_set(ctx, f, base, path, node, &at);
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return rc;
}

/* The value of a list key: YAML replacing the list, or appended to it. */
static int set_list(load_ctx *ctx, const schema_field *f, unsigned char *base,
                    const char *path, size_t value_offset, bool append)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    int rc = load_value(ctx, value_offset, &parser, &doc);
    if (rc)
        return rc;
    yaml_node_t *node = yaml_document_get_root_node(&doc);
    ctx->mark_shift = diag_utf8_chars(ctx->text, value_offset);
    if (!node) {
        where at = {ctx->source, ctx->text, ctx->length, 0, ctx->mark_shift};
        rc = diag_fail_at(ctx, &at, "%s: expected a list of entries, like "
                          "%s=[{%s: a}, {%s: b}]", path, path,
                          f->children[0].key, f->children[0].key);
    } else {
        rc = document_set_sequence(ctx, &doc, node, f, base, path, append);
    }
    ctx->mark_shift = 0;
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return rc;
}

/* After a sequence key at *p: an index into its existing entries, .N or
 * [N]. Moves *p past it, *base to the entry and appends [N] to path. */
static int enter_entry(load_ctx *ctx, const schema_field *f, const char **p,
                       const char *equals, unsigned char **base, char *path)
{
    const char *arg = ctx->text, *q = *p;
    where at = {ctx->source, arg, ctx->length, 0, 0};
    int count;
    memcpy(&count, *base + f->count_offset, sizeof count);
    bool bracket = q < equals && *q == '[';
    if (q < equals)
        q++;
    const char *digits = q;
    long index = 0;
    while (q < equals && *q >= '0' && *q <= '9' && q - digits < 9)
        index = index * 10 + (*q++ - '0');
    at.column = diag_utf8_chars(arg, (size_t)(digits - arg));
    if (q == digits)
        return diag_fail_at(ctx, &at,
                            "%s: expected an entry index (0..%d) and a "
                            "key, like %s.0.%s=VALUE",
                            path, count - 1, path, f->children[0].key);
    if (index >= count)
        return diag_fail_at(ctx, &at, "%s: index %ld is out of range (0..%d)",
                            path, index, count - 1);
    if (bracket) {
        at.column = diag_utf8_chars(arg, (size_t)(q - arg));
        if (q == equals || *q != ']')
            return diag_fail_at(ctx, &at, "%s: expected \"]\"", path);
        q++;
    }
    *base += f->offset + (size_t)index * f->item_size;
    char entry[PATH_LEN];
    schema_format_path(entry, "%s[%ld]", path, index);
    memcpy(path, entry, PATH_LEN);
    *p = q;
    return 0;
}

/* Applies `a.b=value`, `cluster.devices.N.key=value`,
 * `cluster.devices[N].key=value`, `cluster.devices=[...]` or
 * `cluster.devices+={...}`. */
int overrides_apply(load_ctx *ctx, const char *arg)
{
    ctx->source = "--set";
    ctx->text = arg;
    ctx->length = strlen(arg);
    where at = {ctx->source, arg, ctx->length, 0, 0};
    char keys[512], got[SHOW_BUF];

    const char *equals = strchr(arg, '=');
    if (!equals) {
        at.column = diag_utf8_chars(arg, ctx->length);
        return diag_fail_at(
            ctx, &at,
            "expected KEY=VALUE (like model.d_model=256), "
            "missing \"=\" in %s",
            diag_show(arg, ctx->length, true, got, sizeof got));
    }

    /* KEY+=VALUE appends to a list: the key ends before the "+". */
    bool append = equals > arg && equals[-1] == '+';
    size_t value_offset = (size_t)(equals + 1 - arg);
    if (append)
        equals--;
    const schema_field *fields = schema_root_fields;
    unsigned char *base = (unsigned char *)ctx->cfg;
    const schema_field *f = NULL;
    char path[PATH_LEN] = "";
    bool record = true;
    const char *p = arg;
    for (;;) {
        const char *segment = p;
        while (p < equals && *p != '.' && *p != '[')
            p++;
        at.column = diag_utf8_chars(arg, (size_t)(segment - arg));
        if (p == segment)
            return diag_fail_at(ctx, &at, "%s%sexpected a key name", path,
                                path[0] ? ": " : "");
        f = schema_find_field(fields, segment, (size_t)(p - segment));
        if (!f)
            return diag_fail_unknown_key(ctx, &at, path, fields, segment,
                                         (size_t)(p - segment));
        char child[PATH_LEN];
        schema_join_path(child, path, f->key);
        memcpy(path, child, sizeof path);

        if (f->kind == FIELD_SEQUENCE && p == equals)
            return set_list(ctx, f, base, path, value_offset, append);
        if (f->kind == FIELD_SEQUENCE) {
            int rc = enter_entry(ctx, f, &p, equals, &base, path);
            if (rc)
                return rc;
            record = false;
        }
        if (f->kind == FIELD_SECTION || f->kind == FIELD_SEQUENCE) {
            fields = f->children;
            at.column = diag_utf8_chars(arg, (size_t)(p - arg));
            if (p == equals) {
                schema_list_keys(fields, keys, sizeof keys);
                return diag_fail_at(ctx, &at,
                                    "%s: not a value; set one of its keys: %s",
                                    path, keys);
            }
            if (*p != '.')
                return diag_fail_at(ctx, &at, "%s: expected \".\" and a key",
                                    path);
            p++;
            continue;
        }
        if (p != equals) {
            at.column = diag_utf8_chars(arg, (size_t)(p - arg));
            return diag_fail_at(ctx, &at, "%s: is a value and has no keys",
                                path);
        }
        break;
    }
    if (append) {
        at.column = diag_utf8_chars(arg, (size_t)(equals - arg));
        return diag_fail_at(ctx, &at, "%s: += appends to a list (like "
                            "cluster.devices); this is a value: use =",
                            path);
    }
    int rc = set_value(ctx, f, base, path, value_offset);
    if (rc == 0 && record) {
        at.column = 0;
        checks_record_mark(
            ctx, (size_t)(base - (unsigned char *)ctx->cfg) + f->offset, path,
            &at);
    }
    return rc;
}
