/* Fuzzes the checkpoint reader (checkpoint_open, then checkpoint_read) for
 * one small model, built once from MODEL_YAML on the CPU backend.
 *
 * An input is a checkpoint directory's files, one after another:
 *
 *     MANIFEST                      written as step-00000000/manifest.json
 *     \n@@file NAME\nBYTES          written as step-00000000/NAME
 *     ...                           (at most SECTIONS_MAX; NAME a plain
 *                                   file name of [A-Za-z0-9._-])
 *
 * or an earlier moectl's single-file checkpoint (it starts with
 * "MOECTLCK"), written as step-00000001.ckpt. The reader is given the
 * directory above them, so it first looks for the newest checkpoint there.
 *
 * Beside the input's files lie two written at start-up by checkpoint_save,
 * from model state filled with a fixed pattern (so their bytes and hashes
 * are the same under every compiler): dense-fuzz.bin and
 * experts-r0000-fuzz.bin. A manifest may name them and so reach the
 * expert shards with a few hundred bytes of input.
 *
 * Oracle: a checkpoint that opens records a placement whose every rank is
 * one of the ranks it says wrote it (0 <= rank < ranks). */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/model/checkpoint.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/fuzz/fuzz.h"

#define MODEL_YAML                                                            \
    "model: {d_model: 8, n_layers: 2, n_heads: 1, seq_len: 8}\n"             \
    "moe: {n_experts: 4, top_k: 2, n_shared: 1, expert_hidden: 2}\n"         \
    "train: {batch_size: 2}\n"
/* The temporary directory: DIR_PREFIX and the process id. */
#define DIR_PREFIX "moectl-fuzz-checkpoint-"
#define SECTION_MARK "\n@@file "
#define TEMPLATE_DENSE "dense-fuzz.bin"
#define TEMPLATE_EXPERTS "experts-r0000-fuzz.bin"
#define LEGACY_NAME "step-00000001.ckpt"
#define LEGACY_MAGIC "MOECTLCK"
enum { SECTIONS_MAX = 8, NAME_MAX_BYTES = 64 };

static struct {
    char dir[256];      /* the temporary directory given to the reader */
    char step_dir[300]; /* dir/step-00000000 */
    backend be;
    model *m;
    int *expert_rank;   /* (L, E) */
} fuzz;

/* Whole numbers over 64: exact in any float arithmetic. */
static void fill_pattern(float *x, size_t n, unsigned salt)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)((i * 7 + salt) % 61) / 64.0f - 0.25f;
}

static void remove_in(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
}

/* rm -r of a directory this harness made (files, and directories of files
 * one level down). */
static void remove_tree(const char *dir, int depth)
{
    DIR *d = opendir(dir);
    struct dirent *entry;
    while (d && (entry = readdir(d)) != NULL) {
        char path[512];
        struct stat sb;
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, entry->d_name);
        if (lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode) && depth > 0)
            remove_tree(path, depth - 1);
        else
            unlink(path);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

/* A run that crashes or is killed skips atexit: the directories of
 * fuzzers no longer running go at the next start. */
static void remove_stale(const char *tmp)
{
    DIR *d = opendir(tmp);
    struct dirent *entry;
    while (d && (entry = readdir(d)) != NULL) {
        long pid = 0;
        char path[512];
        if (sscanf(entry->d_name, DIR_PREFIX "%ld", &pid) == 1 && pid > 0 &&
            kill((pid_t)pid, 0) < 0 && errno == ESRCH) {
            snprintf(path, sizeof path, "%s/%s", tmp, entry->d_name);
            remove_tree(path, 1);
        }
    }
    if (d)
        closedir(d);
}

static void cleanup(void)
{
    remove_tree(fuzz.dir, 1);
    model_destroy(fuzz.m);
    cpu_backend_finish(&fuzz.be);
    free(fuzz.expert_rank);
}

/* Renames the file a manifest entry names to `name`. */
static int rename_entry(json_t *entry, const char *name)
{
    const char *file = json_string_value(json_object_get(entry, "file"));
    char from[512], to[512];
    if (!file)
        return -1;
    snprintf(from, sizeof from, "%s/%s", fuzz.step_dir, file);
    snprintf(to, sizeof to, "%s/%s", fuzz.step_dir, name);
    return rename(from, to);
}

/* The template files: a checkpoint of the patterned model, its files
 * renamed to fixed names and its manifest removed. */
static int write_template(moe_error *err)
{
    model *m = fuzz.m;
    fill_pattern(m->param_memory, m->dense_count, 1);
    fill_pattern(m->adam_m_memory, m->dense_count, 2);
    fill_pattern(m->adam_v_memory, m->dense_count, 3);
    size_t slots = (size_t)m->experts.capacity * m->experts.slot_count;
    fill_pattern(m->experts.params, slots, 4);
    fill_pattern(m->experts.adam_m, slots, 5);
    fill_pattern(m->experts.adam_v, slots, 6);
    size_t cells = (size_t)m->dims.L * m->dims.E;
    fill_pattern(m->routing.bias, cells, 7);
    for (int l = 0; l < m->dims.L; l++) {
        m->routing.logit_mean[l] = 0.5 * l;
        m->routing.logit_var[l] = 0.25 + l;
    }
    m->routing.stats_ready = 1;
    memset(fuzz.expert_rank, 0, cells * sizeof *fuzz.expert_rank);
    const comm alone = {.rank = 0, .world = 1};
    checkpoint_state st = {.step = 0, .tokens_seen = 1234, .seed = 42,
                           .data_rng = {{1, 2, 3, 4}}};
    if (checkpoint_save(fuzz.dir, 1, m, &alone, fuzz.expert_rank, &st, NULL,
                        0, err) < 0)
        return -1;
    char path[512];
    snprintf(path, sizeof path, "%s/manifest.json", fuzz.step_dir);
    json_t *manifest = json_load_file(path, 0, NULL);
    int status = manifest &&
                 rename_entry(json_object_get(manifest, "dense"),
                              TEMPLATE_DENSE) == 0 &&
                 rename_entry(json_array_get(json_object_get(manifest,
                                                             "shards"), 0),
                              TEMPLATE_EXPERTS) == 0 ? 0 : -1;
    json_decref(manifest);
    unlink(path);
    if (status < 0)
        error_set(err, "cannot rename the template files in %s",
                  fuzz.step_dir);
    return status;
}

static int set_up(void)
{
    config cfg;
    moe_error err = {{0}};
    const char *tmp = getenv("TMPDIR");
    tmp = tmp && tmp[0] ? tmp : "/tmp";
    remove_stale(tmp);
    snprintf(fuzz.dir, sizeof fuzz.dir, "%s/" DIR_PREFIX "%ld", tmp,
             (long)getpid());
    remove_tree(fuzz.dir, 1); /* an earlier process's, of the same pid */
    if (mkdir(fuzz.dir, 0700) < 0) {
        fprintf(stderr, "fuzz_checkpoint: mkdir %s: %s\n", fuzz.dir,
                strerror(errno));
        return -1;
    }
    snprintf(fuzz.step_dir, sizeof fuzz.step_dir, "%s/step-00000000",
             fuzz.dir);
    atexit(cleanup);
    if (config_load_text(&cfg, "fuzz_checkpoint", MODEL_YAML,
                         strlen(MODEL_YAML), NULL, 0, &err) < 0 ||
        cpu_backend_init(&fuzz.be, 1) < 0 ||
        model_create(&fuzz.m, &cfg, &fuzz.be, 1, MODEL_EXPERTS_LOCAL,
                     &err) < 0) {
        fprintf(stderr, "fuzz_checkpoint: cannot build the model: %s\n",
                err.message);
        return -1;
    }
    fuzz.expert_rank = malloc((size_t)fuzz.m->dims.L * fuzz.m->dims.E *
                              sizeof *fuzz.expert_rank);
    if (!fuzz.expert_rank || write_template(&err) < 0) {
        fprintf(stderr, "fuzz_checkpoint: cannot write the template "
                        "checkpoint: %s\n", err.message);
        return -1;
    }
    return 0;
}

/* Writes size bytes to dir/name; returns 0 or -1. */
static int write_file(const char *dir, const char *name, const uint8_t *data,
                      size_t size)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t written = size ? fwrite(data, 1, size, f) : 0;
    return fclose(f) == 0 && written == size ? 0 : -1;
}

/* A section's name: a plain file name, not the manifest nor a template. */
static int plain_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || strspn(name, "abcdefghijklmnopqrstuvwxyz"
                               "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != n)
        return 0;
    return strcmp(name, ".") != 0 && strcmp(name, "..") != 0 &&
           strcmp(name, "manifest.json") != 0 &&
           strcmp(name, TEMPLATE_DENSE) != 0 &&
           strcmp(name, TEMPLATE_EXPERTS) != 0;
}

static const uint8_t *find_mark(const uint8_t *from, const uint8_t *end)
{
    const size_t n = sizeof SECTION_MARK - 1;
    for (const uint8_t *p = from; (size_t)(end - p) >= n; p++)
        if (memcmp(p, SECTION_MARK, n) == 0)
            return p;
    return end;
}

/* Writes the manifest and the sections of a directory input; fills names
 * (room for SECTIONS_MAX) with the sections written, for removal. */
static int write_directory(const uint8_t *data, size_t size,
                           char names[][NAME_MAX_BYTES + 1], int *count)
{
    const uint8_t *end = data + size, *mark = find_mark(data, end);
    *count = 0;
    if (write_file(fuzz.step_dir, "manifest.json", data,
                   (size_t)(mark - data)) < 0)
        return -1;
    while (mark < end && *count < SECTIONS_MAX) {
        const uint8_t *name = mark + sizeof SECTION_MARK - 1;
        const uint8_t *eol = memchr(name, '\n', (size_t)(end - name));
        const uint8_t *body = eol ? eol + 1 : end;
        mark = find_mark(body, end);
        size_t n = eol ? (size_t)(eol - name) : 0;
        if (n == 0 || n > NAME_MAX_BYTES)
            continue;
        char *slot = names[*count];
        memcpy(slot, name, n);
        slot[n] = '\0';
        if (!plain_name(slot))
            continue;
        ++*count; /* removed afterwards even if writing it fails */
        if (write_file(fuzz.step_dir, slot, body, (size_t)(mark - body)) < 0)
            return -1;
    }
    return 0;
}

static void check_placement(int ranks)
{
    size_t cells = (size_t)fuzz.m->dims.L * fuzz.m->dims.E;
    for (size_t x = 0; x < cells; x++)
        if (fuzz.expert_rank[x] < 0 || fuzz.expert_rank[x] >= ranks) {
            fprintf(stderr, "fuzz_checkpoint: an opened checkpoint places "
                            "expert %zu on rank %d, but says %d rank(s) "
                            "wrote it\n", x, fuzz.expert_rank[x], ranks);
            abort();
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready = 0;
    if (ready == 0)
        ready = set_up() == 0 ? 1 : -1;
    if (ready < 0)
        abort(); /* no model: every input would pass untested */
    char names[SECTIONS_MAX][NAME_MAX_BYTES + 1];
    int written = 0;
    int legacy = size >= sizeof LEGACY_MAGIC - 1 &&
                 memcmp(data, LEGACY_MAGIC, sizeof LEGACY_MAGIC - 1) == 0;
    int status = legacy ? write_file(fuzz.dir, LEGACY_NAME, data, size)
                        : write_directory(data, size, names, &written);
    if (status == 0) {
        checkpoint_reader *reader = NULL;
        int ranks = 0;
        moe_error err;
        if (checkpoint_open(&reader, fuzz.dir, fuzz.m, fuzz.expert_rank,
                            &ranks, &err) == 0) {
            check_placement(ranks);
            checkpoint_state st;
            checkpoint_read(reader, fuzz.m, &st, &err);
            checkpoint_close(reader);
        }
    }
    remove_in(fuzz.dir, LEGACY_NAME);
    remove_in(fuzz.step_dir, "manifest.json");
    for (int i = 0; i < written; i++)
        remove_in(fuzz.step_dir, names[i]);
    return 0;
}
