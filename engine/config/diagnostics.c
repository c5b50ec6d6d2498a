/* Error reports: `file:line:col: message`, the source line and a caret
 * under the column; quoting of values and "did you mean" suggestions. */
#include "engine/config/config_internal.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define LINE_WINDOW 100 /* bytes of a long source line shown */

size_t diag_utf8_chars(const char *s, size_t n)
{
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        count += !utf8_is_continuation((unsigned char)s[i]);
    return count;
}

/* Length of the well-formed UTF-8 sequence at s (1 for ASCII), or 0. */
static size_t utf8_sequence(const char *s, size_t available)
{
    unsigned char c = (unsigned char)s[0];
    size_t n = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2
             : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (n == 0 || n > available)
        return 0;
    for (size_t i = 1; i < n; i++)
        if (!utf8_is_continuation((unsigned char)s[i]))
            return 0;
    return n;
}

/* Byte range [*start, *end) of 0-based `line`; line breaks as libyaml's
 * (\n, \r\n, \r). A line past the end is empty. */
static void find_line(const char *text, size_t length, size_t line,
                      size_t *start, size_t *end)
{
    size_t i = 0;
    if (length >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0)
        i = 3; /* libyaml does not count the BOM in columns */
    for (size_t current = 0; current < line && i < length; i++) {
        if (text[i] == '\n' ||
            (text[i] == '\r' && (i + 1 >= length || text[i + 1] != '\n')))
            current++;
    }
    *start = i;
    while (i < length && text[i] != '\n' && text[i] != '\r')
        i++;
    *end = i;
}

/* Appends the shown line and the caret line (without "^") for `at`, with a
 * window around the column when the line is long. Tabs are kept in both, so
 * the caret lines up however the terminal expands them. */
static void quote_line(const where *at, char *shown, size_t shown_size,
                       char *caret, size_t caret_size)
{
    size_t start, end;
    find_line(at->text, at->length, at->line, &start, &end);
    size_t col = start;
    for (size_t c = 0; c < at->column && col < end; c++) {
        col++;
        while (col < end && utf8_is_continuation((unsigned char)at->text[col]))
            col++;
    }
    size_t from = start, to = end;
    if (end - start > LINE_WINDOW) {
        from = col > start + LINE_WINDOW * 3 / 5 ? col - LINE_WINDOW * 3 / 5
                                                 : start;
        if (from + LINE_WINDOW > end)
            from = end - LINE_WINDOW;
        to = from + LINE_WINDOW;
        while (from < col &&
               utf8_is_continuation((unsigned char)at->text[from]))
            from++;
        while (to > col && to < end &&
               utf8_is_continuation((unsigned char)at->text[to]))
            to--;
    }
    size_t s = 0, k = 0;
    if (from > start) {
        s += (size_t)snprintf(shown, shown_size, "...");
        k += (size_t)snprintf(caret, caret_size, "   ");
    }
    for (size_t i = from; i < to && s + 8 < shown_size; i++) {
        unsigned char c = (unsigned char)at->text[i];
        if (i < col && !utf8_is_continuation(c) && k + 2 < caret_size)
            caret[k++] = c == '\t' ? '\t' : ' ';
        size_t n = c < 0x80 ? 1 : utf8_sequence(at->text + i, to - i);
        if (n > 1) {
            memcpy(shown + s, at->text + i, n);
            s += n;
            i += n - 1;
        } else {
            /* Control characters and bytes that are not UTF-8. */
            bool plain = n == 1 && (c >= 0x20 || c == '\t') && c != 0x7F;
            shown[s++] = plain ? (char)c : '?';
        }
    }
    if (to < end)
        s += (size_t)snprintf(shown + s, shown_size - s, "...");
    shown[s] = '\0';
    /* A caret past the end of the line (a missing "=", end of input). */
    for (size_t c = diag_utf8_chars(at->text + start, end - start);
         c < at->column && k + 2 < caret_size && k < LINE_WINDOW + 8; c++)
        caret[k++] = ' ';
    caret[k] = '\0';
}

int diag_fail_at(load_ctx *ctx, const where *at, const char *fmt, ...)
{
    char message[sizeof ctx->err->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    if (!at)
        return error_set(ctx->err, "%s: %s", ctx->cfg->source, message);

    char head[sizeof message], shown[LINE_WINDOW + 16],
        caret[LINE_WINDOW + 16];
    snprintf(head, sizeof head, "%s:%zu:%zu: ", at->source, at->line + 1,
             at->column + 1);
    quote_line(at, shown, sizeof shown, caret, sizeof caret);
    /* Shorten the message, not the caret, when the whole does not fit. */
    size_t fixed = strlen(head) + 3 + strlen(shown) + 3 + strlen(caret) + 1;
    size_t room =
        fixed + 16 < sizeof message ? sizeof message - 1 - fixed : 16;
    if (strlen(message) > room) {
        size_t cut = room - 3;
        while (cut > 0 && utf8_is_continuation((unsigned char)message[cut]))
            cut--;
        memcpy(message + cut, "...", 4);
    }
    return error_set(ctx->err, "%s%s\n  %s\n  %s^", head, message, shown,
                     caret);
}

where diag_where_mark(const load_ctx *ctx, yaml_mark_t mark)
{
    return (where){ctx->source, ctx->text, ctx->length, mark.line,
                   mark.column + (mark.line == 0 ? ctx->mark_shift : 0)};
}

/* Quotes text for a message: at most SHOW_MAX bytes, control characters
 * and bytes that are not UTF-8 as '?'. */
const char *diag_show(const char *text, size_t length, bool quoted,
                      char *buf, size_t size)
{
    size_t n = length, k = 0;
    bool cut = n > SHOW_MAX;
    if (cut) {
        n = SHOW_MAX;
        while (n > 0 && utf8_is_continuation((unsigned char)text[n]))
            n--;
    }
    if (quoted)
        buf[k++] = '"';
    for (size_t i = 0; i < n && k + 9 < size; i++) {
        unsigned char c = (unsigned char)text[i];
        size_t len = utf8_sequence(text + i, n - i);
        if (len > 1) {
            memcpy(buf + k, text + i, len);
            k += len;
            i += len - 1;
        } else {
            buf[k++] = len == 0 || c < 0x20 || c == 0x7F ? '?' : (char)c;
        }
    }
    if (cut)
        k += (size_t)snprintf(buf + k, size - k, "...");
    if (quoted)
        buf[k++] = '"';
    buf[k] = '\0';
    return buf;
}

/* "a mapping", "a sequence", "an empty value" or the quoted scalar. */
const char *diag_describe_node(const yaml_node_t *node, char *buf, size_t size)
{
    if (!node || (node->type == YAML_SCALAR_NODE &&
                  node->data.scalar.length == 0))
        return "an empty value";
    if (node->type == YAML_MAPPING_NODE)
        return "a mapping";
    if (node->type == YAML_SEQUENCE_NODE)
        return "a sequence";
    return diag_show((const char *)node->data.scalar.value,
                     node->data.scalar.length, true, buf, size);
}

/* Optimal string alignment distance, so that a swap of two neighbours
 * ("d_modle") counts as one edit. */
static size_t edit_distance(const char *a, size_t na, const char *b,
                     size_t nb)
{
    enum { N = 64 };
    size_t rows[3][N + 1];
    if (na > N || nb > N)
        return SIZE_MAX;
    size_t *prev2 = rows[0], *prev = rows[1], *cur = rows[2];
    for (size_t j = 0; j <= nb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= na; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= nb; j++) {
            size_t cost = a[i - 1] != b[j - 1];
            size_t best = prev[j - 1] + cost;
            if (prev[j] + 1 < best)
                best = prev[j] + 1;
            if (cur[j - 1] + 1 < best)
                best = cur[j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] &&
                a[i - 2] == b[j - 1] && prev2[j - 2] + 1 < best)
                best = prev2[j - 2] + 1;
            cur[j] = best;
        }
        size_t *t = prev2;
        prev2 = prev;
        prev = cur;
        cur = t;
    }
    return prev[nb];
}

int diag_fail_unknown_key(load_ctx *ctx, const where *at, const char *path,
                          const schema_field *fields, const char *key,
                          size_t length)
{
    const char *noun = path[0] ? "key" : "section";
    char shown[SHOW_BUF];
    diag_show(key, length, true, shown, sizeof shown);
    const schema_field *best = NULL;
    size_t best_distance = SIZE_MAX;
    for (const schema_field *f = fields; f->key; f++) {
        size_t d = edit_distance(key, length, f->key, strlen(f->key));
        size_t limit = strlen(f->key) / 3 > 1 ? strlen(f->key) / 3 : 1;
        if (d <= limit && d < best_distance) {
            best = f;
            best_distance = d;
        }
    }
    if (best)
        return diag_fail_at(ctx, at, "%s%sunknown %s %s, did you mean \"%s\"?",
                            path, path[0] ? ": " : "", noun, shown, best->key);
    char keys[512];
    schema_list_keys(fields, keys, sizeof keys);
    return diag_fail_at(ctx, at, "%s%sunknown %s %s (expected one of: %s)",
                        path, path[0] ? ": " : "", noun, shown, keys);
}

int diag_check_nesting(load_ctx *ctx, size_t offset)
{
    int depth = 0;
    size_t line = 0, line_start = 0;
    char quote = 0;
    for (size_t i = offset; i < ctx->length; i++) {
        char ch = ctx->text[i];
        if (ch == '\n') {
            line++;
            line_start = i + 1;
            quote = quote == '"' ? quote : 0; /* '...' ends at the line */
            continue;
        }
        if (quote) {
            if (ch == '\\' && quote == '"' && i + 1 < ctx->length)
                i++;
            else if (ch == quote)
                quote = 0;
            continue;
        }
        if (ch == '"' || ch == '\'') {
            quote = ch;
        } else if (ch == '#' && (i == offset || ctx->text[i - 1] == ' ' ||
                                 ctx->text[i - 1] == '\t')) {
            while (i + 1 < ctx->length && ctx->text[i + 1] != '\n')
                i++;
        } else if (ch == '[' || ch == '{') {
            if (++depth > CONFIG_NESTING_MAX) {
                size_t from = line == 0 ? 0 : line_start;
                where at = {ctx->source, ctx->text, ctx->length, line,
                            diag_utf8_chars(ctx->text + from, i - from)};
                return diag_fail_at(ctx, &at, "nested deeper than %d levels "
                                    "(the limit for a configuration)",
                                    CONFIG_NESTING_MAX);
            }
        } else if ((ch == ']' || ch == '}') && depth > 0) {
            depth--;
        }
    }
    return 0;
}
