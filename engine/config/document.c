/* The YAML document walk: one document, its mappings and sequences
 * matched against the schema. */
#include "engine/config/config_internal.h"

#include <string.h>

static int walk_mapping(load_ctx *ctx, yaml_document_t *doc,
                        yaml_node_t *node, const schema_field *fields,
                        unsigned char *base, const char *path, bool record);

static int walk_sequence(load_ctx *ctx, yaml_document_t *doc,
                         yaml_node_t *node, const schema_field *f,
                         unsigned char *base, const char *path)
{
    char expected[64], got[SHOW_BUF];
    where at = diag_where_mark(ctx, node->start_mark);
    if (node->type != YAML_SEQUENCE_NODE)
        return diag_fail_at(ctx, &at, "%s: expected %s, got %s", path,
                            leaf_expectation(f, expected, sizeof expected),
                            diag_describe_node(node, got, sizeof got));
    yaml_node_item_t *items = node->data.sequence.items.start;
    size_t count = (size_t)(node->data.sequence.items.top - items);
    if ((double)count < f->min || (double)count > f->max)
        return diag_fail_at(ctx, &at,
                            "%s: expected %.0f..%.0f entries, got %zu", path,
                            f->min, f->max, count);
    unsigned char *array = base + f->offset;
    memset(array, 0, f->item_size * (size_t)f->max);
    for (size_t i = 0; i < count; i++) {
        char item_path[PATH_LEN];
        schema_format_path(item_path, "%s[%zu]", path, i);
        unsigned char *item = array + i * f->item_size;
        schema_set_defaults(f->children, item);
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
    where at = diag_where_mark(ctx, node->start_mark);
    if (node->type != YAML_MAPPING_NODE) {
        if (path[0])
            return diag_fail_at(ctx, &at, "%s: expected a mapping, got %s",
                                path,
                                diag_describe_node(node, got, sizeof got));
        schema_list_keys(fields, keys, sizeof keys);
        return diag_fail_at(ctx, &at,
                            "expected a mapping with sections %s, got %s",
                            keys, diag_describe_node(node, got, sizeof got));
    }
    const char *noun = path[0] ? "key" : "section";
    const char *sep = path[0] ? ": " : "";
    yaml_node_pair_t *pairs = node->data.mapping.pairs.start;
    yaml_node_pair_t *top = node->data.mapping.pairs.top;
    for (yaml_node_pair_t *pair = pairs; pair < top; pair++) {
        yaml_node_t *key = yaml_document_get_node(doc, pair->key);
        yaml_node_t *value = yaml_document_get_node(doc, pair->value);
        where key_at = diag_where_mark(ctx, key->start_mark);
        if (key->type != YAML_SCALAR_NODE)
            return diag_fail_at(ctx, &key_at, "%s%sexpected a %s name, got %s",
                                path, sep, noun,
                                diag_describe_node(key, got, sizeof got));
        const char *name = (const char *)key->data.scalar.value;
        size_t length = key->data.scalar.length;
        for (yaml_node_pair_t *prev = pairs; prev < pair; prev++) {
            yaml_node_t *other = yaml_document_get_node(doc, prev->key);
            if (other->type == YAML_SCALAR_NODE &&
                other->data.scalar.length == length &&
                memcmp(other->data.scalar.value, name, length) == 0)
                return diag_fail_at(
                    ctx, &key_at,
                    "%s%sduplicate %s %s (first given on line %zu)", path, sep,
                    noun, diag_show(name, length, true, got, sizeof got),
                    other->start_mark.line + 1);
        }
        const schema_field *f = schema_find_field(fields, name, length);
        if (!f)
            return diag_fail_unknown_key(ctx, &key_at, path, fields, name,
                                         length);

        char child[PATH_LEN];
        schema_join_path(child, path, f->key);
        int rc;
        if (f->kind == FIELD_SECTION) {
            rc = walk_mapping(ctx, doc, value, f->children, base, child,
                              record);
        } else if (f->kind == FIELD_SEQUENCE) {
            rc = walk_sequence(ctx, doc, value, f, base, child);
        } else {
            where value_at = diag_where_mark(ctx, value->start_mark);
            rc = leaf_set(ctx, f, base, child, value, &value_at);
            if (rc == 0 && record)
                checks_record_mark(ctx,
                                   (size_t)(base - (unsigned char *)ctx->cfg) +
                                       f->offset,
                                   child, &key_at);
        }
        if (rc)
            return rc;
    }
    return 0;
}

int document_set_sequence(load_ctx *ctx, yaml_document_t *doc,
                          yaml_node_t *node, const schema_field *f,
                          unsigned char *base, const char *path, bool append)
{
    if (!append)
        return walk_sequence(ctx, doc, node, f, base, path);
    char got[SHOW_BUF];
    where at = diag_where_mark(ctx, node->start_mark);
    yaml_node_item_t one = 0, *items = &one;
    size_t added = 1;
    if (node->type == YAML_SEQUENCE_NODE) {
        items = node->data.sequence.items.start;
        added = (size_t)(node->data.sequence.items.top - items);
    } else if (node->type != YAML_MAPPING_NODE) {
        return diag_fail_at(ctx, &at, "%s: += appends an entry (a mapping "
                            "like {name: c, backend: cpu}) or a list of "
                            "them, got %s", path,
                            diag_describe_node(node, got, sizeof got));
    }
    int count;
    memcpy(&count, base + f->count_offset, sizeof count);
    if ((double)count + (double)added > f->max)
        return diag_fail_at(ctx, &at, "%s: %d entries and %zu more is over "
                            "the most, %.0f", path, count, added, f->max);
    for (size_t i = 0; i < added; i++) {
        char item_path[PATH_LEN];
        schema_format_path(item_path, "%s[%zu]", path, (size_t)count);
        unsigned char *item = base + f->offset + (size_t)count * f->item_size;
        schema_set_defaults(f->children, item);
        yaml_node_t *entry = node->type == YAML_SEQUENCE_NODE
                                 ? yaml_document_get_node(doc, items[i])
                                 : node;
        int rc = walk_mapping(ctx, doc, entry, f->children, item, item_path,
                              false);
        if (rc)
            return rc;
        count++;
        memcpy(base + f->count_offset, &count, sizeof count);
    }
    return 0;
}

/* Reports libyaml's error. The parser read ctx->text from `offset` on (a
 * --set value sits after its key), so its first line is shifted. */
int document_fail_yaml(load_ctx *ctx, const yaml_parser_t *parser,
                       size_t offset)
{
    const char *input = ctx->text + offset;
    size_t shift = diag_utf8_chars(ctx->text, offset);
    where at = {ctx->source, ctx->text, ctx->length, 0, 0};
    const char *problem = parser->problem ? parser->problem : "unknown error";
    if (parser->error == YAML_MEMORY_ERROR)
        return diag_fail_at(ctx, NULL, "out of memory while reading YAML");
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
        at.column = diag_utf8_chars(input + line_start, end - line_start) +
                    (at.line == 0 ? shift : 0);
        if (parser->problem_value != -1)
            return diag_fail_at(ctx, &at,
                                "invalid YAML input: %s (byte 0x%02X)",
                                problem, (unsigned)parser->problem_value);
        return diag_fail_at(ctx, &at, "invalid YAML input: %s", problem);
    }
    at.line = parser->problem_mark.line;
    at.column = parser->problem_mark.column + (at.line == 0 ? shift : 0);
    if (parser->context)
        return diag_fail_at(
            ctx, &at, "YAML syntax error: %s (%s at line %zu, column %zu)",
            problem, parser->context, parser->context_mark.line + 1,
            parser->context_mark.column + 1 +
                (parser->context_mark.line == 0 ? shift : 0));
    return diag_fail_at(ctx, &at, "YAML syntax error: %s", problem);
}

int document_load(load_ctx *ctx)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser))
        return diag_fail_at(ctx, NULL, "out of memory while reading YAML");
    yaml_parser_set_input_string(&parser, (const unsigned char *)ctx->text,
                                 ctx->length);
    if (!yaml_parser_load(&parser, &doc)) {
        int rc = document_fail_yaml(ctx, &parser, 0);
        yaml_parser_delete(&parser);
        return rc;
    }
    int rc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) {
        char keys[512];
        schema_list_keys(schema_root_fields, keys, sizeof keys);
        rc = diag_fail_at(ctx, NULL,
                          "the configuration is empty; expected a mapping "
                          "with sections %s",
                          keys);
    } else {
        rc = walk_mapping(ctx, &doc, root, schema_root_fields,
                          (unsigned char *)ctx->cfg, "", true);
    }
    yaml_document_delete(&doc);
    if (rc == 0) {
        yaml_document_t extra;
        if (!yaml_parser_load(&parser, &extra)) {
            rc = document_fail_yaml(ctx, &parser, 0);
        } else {
            if (yaml_document_get_root_node(&extra)) {
                where at = diag_where_mark(ctx, extra.start_mark);
                rc = diag_fail_at(ctx, &at,
                                  "a configuration is one YAML document; "
                                  "found a second one");
            }
            yaml_document_delete(&extra);
        }
    }
    yaml_parser_delete(&parser);
    return rc;
}
