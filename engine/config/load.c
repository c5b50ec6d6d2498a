/* Entry points: defaults, then a document, then --set overrides, then the
 * cross-field checks. */
#include "engine/config/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/config/config_internal.h"

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
        while (n > 0 && utf8_is_continuation((unsigned char)base[n]))
            n--;
    }
    memcpy(name, base, n);
    name[n] = '\0';
}

static int load(config *cfg, const char *source, const char *name,
                const char *text, size_t length, const char *const *sets,
                int set_count, int for_run, moe_error *err)
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

    int rc = diag_check_nesting(ctx, 0);
    if (rc == 0)
        rc = document_load(ctx);
    for (int i = 0; rc == 0 && i < set_count; i++)
        rc = overrides_apply(ctx, sets[i]);
    if (rc == 0)
        rc = checks_cross_fields(ctx);
    if (rc == 0 && for_run)
        rc = checks_files(ctx);
    free(ctx);
    return rc;
}

int config_load_text(config *cfg, const char *source, const char *text,
                     size_t length, const char *const *sets, int set_count,
                     moe_error *err)
{
    return load(cfg, source, NULL, text, length, sets, set_count, 0, err);
}

/* Reads a whole file; the caller frees *text. A FIFO, a directory or a
 * device is refused before it is opened (a FIFO would block), and so is a
 * file over CONFIG_TEXT_MAX. */
static int read_file(const char *path, char **text, size_t *length,
                     moe_error *err)
{
    char why[CONFIG_PATH_MAX + 128];
    long long bytes = 0;
    if (config_regular_file(path, &bytes, why, sizeof why) < 0)
        return error_set(err, "%s", why);
    if (bytes > CONFIG_TEXT_MAX)
        return error_set(err, "%s: %lld bytes is too large for a "
                              "configuration (at most %d)", path, bytes,
                         CONFIG_TEXT_MAX);
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

static int load_path(config *cfg, const char *path, const char *const *sets,
                     int set_count, int for_run, moe_error *err)
{
    if (!path)
        return load(cfg, "<embedded default>", "default", config_default_yaml,
                    config_default_yaml_length, sets, set_count, for_run,
                    err);
    char *text = NULL;
    size_t length = 0;
    if (read_file(path, &text, &length, err))
        return -1;
    int rc = load(cfg, path, NULL, text, length, sets, set_count, for_run,
                  err);
    free(text);
    return rc;
}

int config_load(config *cfg, const char *path, const char *const *sets,
                int set_count, moe_error *err)
{
    return load_path(cfg, path, sets, set_count, 0, err);
}

int config_load_for_run(config *cfg, const char *path,
                        const char *const *sets, int set_count,
                        moe_error *err)
{
    return load_path(cfg, path, sets, set_count, 1, err);
}
