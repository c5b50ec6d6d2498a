/* Tests of config_describe, the reference generated from the schema:
 * - every key the schema accepts (every key of a printed configuration)
 *   is described, and nothing else is;
 * - every key of configs/default.yaml is described;
 * - each described default is what loading starts from: setting every
 *   key to its described default changes nothing;
 * - the roff page names the same keys and makes no stray requests.
 * Usage: test_describe SOURCE_ROOT */
#include "engine/config/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#define KEYS_MAX 256
#define KEY_LEN 96

#include "tests/expect.h"

typedef struct key_list {
    char keys[KEYS_MAX][KEY_LEN];
    char defaults[KEYS_MAX][CONFIG_PATH_MAX]; /* described lists only */
    int count;
} key_list;

static int find_key(const key_list *list, const char *key)
{
    for (int i = 0; i < list->count; i++)
        if (strcmp(list->keys[i], key) == 0)
            return i;
    return -1;
}

static void add_key(key_list *list, const char *key)
{
    if (find_key(list, key) >= 0)
        return;
    EXPECT_THAT(list->count < KEYS_MAX);
    if (list->count < KEYS_MAX)
        snprintf(list->keys[list->count++], KEY_LEN, "%s", key);
}

static char *describe_text(config_describe_format format)
{
    char *text = NULL;
    size_t length = 0;
    FILE *out = open_memstream(&text, &length);
    EXPECT_THAT(out != NULL);
    if (!out)
        return NULL;
    EXPECT_THAT(config_describe(out, format) == 0);
    fclose(out);
    return text;
}

/* Keys of the plain reference: a line of one word at column 0 that holds
 * a '.' is a key; the line under it ends in "; default: VALUE". Section
 * headings (one word, no '.') are not keys. */
static void parse_described(const char *text, key_list *list)
{
    const char *line = text;
    while (*line) {
        size_t n = strcspn(line, "\n");
        const char *next = line[n] ? line + n + 1 : line + n;
        if (n > 0 && n < KEY_LEN && line[0] != ' ' &&
            memchr(line, ' ', n) == NULL && memchr(line, '.', n) != NULL) {
            char key[KEY_LEN];
            memcpy(key, line, n);
            key[n] = '\0';
            EXPECT_THAT(find_key(list, key) < 0); /* each key once */
            add_key(list, key);
            size_t m = strcspn(next, "\n");
            const char *mark = NULL;
            for (const char *p = next; p < next + m; p++)
                if (strncmp(p, "; default: ", 11) == 0)
                    mark = p + 11;
            EXPECT_THAT(mark != NULL);
            if (mark)
                snprintf(list->defaults[list->count - 1], CONFIG_PATH_MAX,
                         "%.*s", (int)(next + m - mark), mark);
        }
        line = next;
    }
}

/* Dotted paths of a YAML document's keys; a sequence's entries add
 * PATH[].KEY, and the sequence itself is a key too. */
static void flatten(yaml_document_t *doc, yaml_node_t *node,
                    const char *path, key_list *list)
{
    if (node->type == YAML_SEQUENCE_NODE) {
        add_key(list, path);
        char item[KEY_LEN];
        snprintf(item, sizeof item, "%s[]", path);
        for (yaml_node_item_t *i = node->data.sequence.items.start;
             i < node->data.sequence.items.top; i++)
            flatten(doc, yaml_document_get_node(doc, *i), item, list);
        return;
    }
    if (node->type != YAML_MAPPING_NODE) {
        add_key(list, path);
        return;
    }
    for (yaml_node_pair_t *p = node->data.mapping.pairs.start;
         p < node->data.mapping.pairs.top; p++) {
        yaml_node_t *key = yaml_document_get_node(doc, p->key);
        char child[KEY_LEN];
        snprintf(child, sizeof child, "%s%s%.*s", path, path[0] ? "." : "",
                 (int)key->data.scalar.length,
                 (const char *)key->data.scalar.value);
        /* A mapping (a section) adds only its keys. */
        flatten(doc, yaml_document_get_node(doc, p->value), child, list);
    }
}

static void yaml_keys(const char *text, size_t length, key_list *list)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    EXPECT_THAT(yaml_parser_initialize(&parser));
    yaml_parser_set_input_string(&parser, (const unsigned char *)text,
                                 length);
    int loaded = yaml_parser_load(&parser, &doc);
    EXPECT_THAT(loaded);
    if (loaded) {
        yaml_node_t *root = yaml_document_get_root_node(&doc);
        EXPECT_THAT(root && root->type == YAML_MAPPING_NODE);
        if (root)
            flatten(&doc, root, "", list);
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&parser);
}

static char *read_whole(const char *path, size_t *length)
{
    FILE *f = fopen(path, "rb");
    EXPECT_THAT(f != NULL);
    if (!f)
        return NULL;
    char *text = calloc(1, 1 << 20);
    *length = text ? fread(text, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    return text;
}

static int compare_values(const config *a, const config *b)
{
    config x = *a, y = *b;
    memcpy(y.name, x.name, sizeof x.name);
    memcpy(y.source, x.source, sizeof x.source);
    return memcmp(&x, &y, sizeof x);
}

static void test_keys(const key_list *described, const char *root)
{
    /* The printer walks every key the schema accepts. */
    config defaults;
    config_defaults(&defaults);
    char *printed = NULL;
    size_t length = 0;
    FILE *out = open_memstream(&printed, &length);
    EXPECT_THAT(out != NULL);
    if (!out)
        return;
    config_print(&defaults, out);
    fclose(out);
    static key_list accepted;
    yaml_keys(printed, length, &accepted);
    free(printed);
    EXPECT_THAT(accepted.count > 40);
    for (int i = 0; i < accepted.count; i++)
        if (find_key(described, accepted.keys[i]) < 0) {
            fprintf(stderr, "not described: %s\n", accepted.keys[i]);
            failures++;
        }
    for (int i = 0; i < described->count; i++)
        if (find_key(&accepted, described->keys[i]) < 0) {
            fprintf(stderr, "described but not a key: %s\n",
                    described->keys[i]);
            failures++;
        }

    char path[2048];
    snprintf(path, sizeof path, "%s/configs/default.yaml", root);
    char *text = read_whole(path, &length);
    if (!text)
        return;
    static key_list in_default;
    yaml_keys(text, length, &in_default);
    free(text);
    EXPECT_THAT(in_default.count > 40);
    for (int i = 0; i < in_default.count; i++)
        if (find_key(described, in_default.keys[i]) < 0) {
            fprintf(stderr, "configs/default.yaml key not described: %s\n",
                    in_default.keys[i]);
            failures++;
        }
}

/* Every leaf set to its described default, as --set overrides of an
 * empty mapping, loads to the defaults. */
static void test_defaults(const key_list *described)
{
    static char sets_text[KEYS_MAX][KEY_LEN + CONFIG_PATH_MAX + 8];
    const char *sets[KEYS_MAX];
    int set_count = 0;
    for (int i = 0; i < described->count; i++) {
        const char *key = described->keys[i];
        char entries[KEY_LEN + 2];
        snprintf(entries, sizeof entries, "%s[]", key);
        if (i + 1 < described->count &&
            strncmp(described->keys[i + 1], entries, strlen(entries)) == 0)
            continue; /* the sequence itself ("1 entry"), then its keys */
        const char *brackets = strstr(key, "[]");
        if (brackets)
            snprintf(sets_text[set_count], sizeof sets_text[0],
                     "%.*s[0]%s=%s", (int)(brackets - key), key,
                     brackets + 2, described->defaults[i]);
        else
            snprintf(sets_text[set_count], sizeof sets_text[0], "%s=%s", key,
                     described->defaults[i]);
        sets[set_count] = sets_text[set_count];
        set_count++;
    }
    config plain, set, defaults;
    moe_error err;
    config_defaults(&defaults);
    EXPECT_THAT(config_load_text(&plain, "empty.yaml", "{}\n", 3, NULL, 0,
                            &err) == 0);
    EXPECT_THAT(compare_values(&plain, &defaults) == 0);
    int rc = config_load_text(&set, "empty.yaml", "{}\n", 3, sets, set_count,
                              &err);
    if (rc != 0)
        fprintf(stderr, "described defaults do not load:\n%s\n",
                err.message);
    EXPECT_THAT(rc == 0);
    EXPECT_THAT(compare_values(&set, &defaults) == 0);
    for (int i = 0; rc == 0 && i < set_count; i++) {
        config one;
        config_load_text(&one, "empty.yaml", "{}\n", 3, &sets[i], 1, &err);
        if (compare_values(&one, &defaults) != 0) {
            fprintf(stderr, "described default is not the default: %s\n",
                    sets[i]);
            failures++;
        }
    }
}

/* The page: a .TH header, every key as ".B KEY" after ".TP", and no line
 * that reads as a request other than the ones the page uses. */
static void test_man(const key_list *described)
{
    static const char *const requests[] = {
        ".TH ", ".SH ", ".SS ", ".TP", ".B ", ".BR ", ".I ", ".IR ", ".RB ",
        ".br", ".PP", ".nh", ".ad l", NULL,
    };
    char *page = describe_text(CONFIG_DESCRIBE_MAN);
    if (!page)
        return;
    EXPECT_THAT(strncmp(page, ".TH MOECTL-CONFIG 5 ", 20) == 0);
    EXPECT_THAT(strstr(page, "\n.SH CONFIGURATION\n") != NULL);
    for (int i = 0; i < described->count; i++) {
        char line[KEY_LEN + 16];
        snprintf(line, sizeof line, ".TP\n.B %s\n", described->keys[i]);
        if (!strstr(page, line)) {
            fprintf(stderr, "man page lacks %s\n", described->keys[i]);
            failures++;
        }
    }
    for (const char *line = page; *line;) {
        size_t n = strcspn(line, "\n");
        if (line[0] == '.' || line[0] == '\'') {
            int known = 0;
            for (int r = 0; requests[r]; r++)
                known |= strncmp(line, requests[r], strlen(requests[r])) == 0;
            if (!known) {
                fprintf(stderr, "stray request: %.*s\n", (int)n, line);
                failures++;
            }
        }
        line += n + (line[n] == '\n');
    }
    free(page);
}

int main(int argc, char **argv)
{
    const char *root = argc > 1 ? argv[1] : ".";
    char *text = describe_text(CONFIG_DESCRIBE_TEXT);
    if (!text)
        return 1;
    static key_list described;
    parse_described(text, &described);
    free(text);
    EXPECT_THAT(described.count > 40);
    test_keys(&described, root);
    test_defaults(&described);
    test_man(&described);

    /* A write that fails is reported. */
    FILE *full = fopen("/dev/full", "w");
    if (full) {
        EXPECT_THAT(config_describe(full, CONFIG_DESCRIBE_TEXT) == -1);
        fclose(full);
    }
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("%d keys described\n", described.count);
    return 0;
}
