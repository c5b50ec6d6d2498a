/* Unit tests for engine/config: defaults, the presets, print/load round
 * trips and --set overrides. Usage: test_config SOURCE_ROOT */
#include "engine/config/config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/expect.h"

#define EXPECT_LOADS(call)                                                   \
    do {                                                                     \
        moe_error e_;                                                        \
        if ((call) != 0) {                                                   \
            fprintf(stderr, "%s:%d: %s failed:\n%s\n", __FILE__, __LINE__,   \
                    #call, e_.message);                                      \
            failures++;                                                      \
        }                                                                    \
    } while (0)

static char root[1024];

static const char *source_path(const char *relative, char *buf, size_t size)
{
    snprintf(buf, size, "%s/%s", root, relative);
    return buf;
}

/* memcmp of everything but the name and source. */
static int compare_values(const config *a, const config *b)
{
    config x = *a, y = *b;
    memcpy(y.name, x.name, sizeof x.name);
    memcpy(y.source, x.source, sizeof x.source);
    return memcmp(&x, &y, sizeof x);
}

/* Prints both as YAML and names the first line where they differ, so that
 * a failed comparison says which key. */
static void report_first_difference(const config *expected,
                                    const config *got)
{
    char *texts[2] = {NULL, NULL};
    size_t lengths[2];
    const config *both[2] = {expected, got};
    for (int i = 0; i < 2; i++) {
        FILE *out = open_memstream(&texts[i], &lengths[i]);
        if (!out)
            return;
        config_print(both[i], out);
        fclose(out);
    }
    /* Past the "# resolved from" line, which names each source. */
    const char *a = strchr(texts[0], '\n'), *b = strchr(texts[1], '\n');
    while (a && b && *a && *a == *b) {
        a++;
        b++;
    }
    if (a && b && (*a || *b)) {
        while (a > texts[0] && a[-1] != '\n') {
            a--;
            b--;
        }
        fprintf(stderr, "first difference: %s has\n  %.*s\nwhere %s has\n"
                "  %.*s\n", expected->source, (int)strcspn(a, "\n"), a,
                got->source, (int)strcspn(b, "\n"), b);
    }
    free(texts[0]);
    free(texts[1]);
}

/* Prints cfg, loads the text back under the same source and compares the
 * whole struct byte for byte. */
static void check_round_trip(const config *cfg)
{
    char *text = NULL;
    size_t length = 0;
    FILE *out = open_memstream(&text, &length);
    EXPECT_THAT(out != NULL);
    if (!out)
        return;
    config_print(cfg, out);
    fclose(out);
    EXPECT_THAT(strncmp(text, "# resolved from ", 16) == 0);

    config back;
    moe_error err;
    int rc = config_load_text(&back, cfg->source, text, length, NULL, 0, &err);
    if (rc != 0)
        fprintf(stderr, "round trip of %s failed:\n%s\n---\n%s", cfg->source,
                err.message, text);
    EXPECT_THAT(rc == 0);
    memcpy(back.name, cfg->name, sizeof back.name);
    EXPECT_THAT(memcmp(&back, cfg, sizeof back) == 0);
    free(text);
}

static void test_defaults(void)
{
    config cfg;
    config_defaults(&cfg);
    EXPECT_THAT(strcmp(cfg.name, "default") == 0);
    EXPECT_THAT(strcmp(cfg.cluster.currency, "USD") == 0);
    EXPECT_THAT(cfg.cluster.device_count == 1);
    EXPECT_THAT(strcmp(cfg.cluster.devices[0].name, "cpu0") == 0);
    EXPECT_THAT(cfg.cluster.devices[0].backend == CONFIG_BACKEND_CPU);
    EXPECT_THAT(cfg.cluster.devices[0].threads == 2);
    EXPECT_THAT(cfg.cluster.devices[0].price_per_hour == 0.10);
    EXPECT_THAT(cfg.cluster.devices[0].slowdown == 1.0);
    EXPECT_THAT(cfg.model.d_model == 128 && cfg.model.n_heads == 4);
    EXPECT_THAT(cfg.model.norm_eps == 1e-5);
    EXPECT_THAT(cfg.moe.n_experts == 8 && cfg.moe.top_k == 2);
    EXPECT_THAT(cfg.moe.capacity_factor == 0);
    EXPECT_THAT(cfg.train.steps == 2000 && cfg.train.seed == 1337);
    EXPECT_THAT(cfg.train.lr == 3e-3 && cfg.train.min_lr == 3e-4);
    EXPECT_THAT(strcmp(cfg.data.path, "data/kjv.txt") == 0);
    EXPECT_THAT(cfg.data.val_fraction == 0.05);
    EXPECT_THAT(cfg.checkpoint.dir[0] == '\0'); /* the run directory's */
    EXPECT_THAT(cfg.checkpoint.every == 500 && cfg.checkpoint.keep == 3);

    /* Padding and unused slots are zero, so two calls compare equal. */
    config again;
    memset(&again, 0xAB, sizeof again);
    config_defaults(&again);
    EXPECT_THAT(memcmp(&cfg, &again, sizeof cfg) == 0);
    check_round_trip(&cfg);
}

static void test_presets(void)
{
    char path[2048];
    config defaults, embedded, file, tiny;
    config_defaults(&defaults);

    EXPECT_LOADS(config_load(&embedded, NULL, NULL, 0, &e_));
    EXPECT_THAT(strcmp(embedded.name, "default") == 0);
    EXPECT_THAT(strcmp(embedded.source, "<embedded default>") == 0);
    /* The schema's defaults and configs/default.yaml must not drift
     * apart: the file states them, the schema is what the code uses. */
    EXPECT_THAT(compare_values(&embedded, &defaults) == 0);
    report_first_difference(&defaults, &embedded);

    source_path("configs/default.yaml", path, sizeof path);
    EXPECT_LOADS(config_load(&file, path, NULL, 0, &e_));
    EXPECT_THAT(strcmp(file.name, "default") == 0);
    EXPECT_THAT(strcmp(file.source, path) == 0);
    EXPECT_THAT(compare_values(&file, &embedded) == 0);
    check_round_trip(&embedded);
    check_round_trip(&file);

    source_path("configs/tiny.yaml", path, sizeof path);
    EXPECT_LOADS(config_load(&tiny, path, NULL, 0, &e_));
    EXPECT_THAT(strcmp(tiny.name, "tiny") == 0);
    EXPECT_THAT(tiny.model.d_model == 32 && tiny.model.n_heads == 2);
    EXPECT_THAT(tiny.cluster.devices[0].threads == 1);
    EXPECT_THAT(tiny.cluster.devices[0].price_per_hour == 0.05);
    /* Keys the preset leaves out keep their defaults. */
    EXPECT_THAT(tiny.cluster.devices[0].index == 0);
    EXPECT_THAT(tiny.cluster.devices[0].slowdown == 1.0);
    EXPECT_THAT(tiny.model.rope_theta == 10000);
    EXPECT_THAT(tiny.moe.capacity_factor == 0);
    EXPECT_THAT(tiny.train.beta2 == 0.95);
    EXPECT_THAT(tiny.train.weight_decay == 0.0);
    EXPECT_THAT(tiny.checkpoint.every == 0);
    check_round_trip(&tiny);
}

static const char multi_yaml[] =
    "cluster:\n"
    "  currency: \"EUR\"\n"
    "  devices:\n"
    "    - {name: gpu0, backend: cuda, index: 0, peak_tflops: 312}\n"
    "    - name: \"weird: name #1\"\n"
    "      backend: hip\n"
    "      index: 3\n"
    "      slowdown: 2.5\n"
    "    - name: \"yes\"\n"
    "    - name: \"t\\tab \\\"q\\\" \\\\ \xc3\xa9\"\n"
    "model: {d_model: 96, n_heads: 3}\n"
    "train:\n"
    "  seed: 18446744073709551615\n"
    "  lr: 0.1\n"
    "  min_lr: 1.0e-300\n"
    "  beta1: 0\n"
    "  eps: 4.9e-324\n"
    "  weight_decay: 1e300\n"
    "data:\n"
    "  path: '/tmp/with space/x.txt'\n";

static void test_multi_device(void)
{
    config cfg;
    EXPECT_LOADS(config_load_text(&cfg, "dir/multi.yml", multi_yaml,
                                  strlen(multi_yaml), NULL, 0, &e_));
    EXPECT_THAT(strcmp(cfg.name, "multi") == 0);
    EXPECT_THAT(strcmp(cfg.cluster.currency, "EUR") == 0);
    EXPECT_THAT(cfg.cluster.device_count == 4);
    EXPECT_THAT(cfg.cluster.devices[0].backend == CONFIG_BACKEND_CUDA);
    EXPECT_THAT(cfg.cluster.devices[0].peak_tflops == 312);
    EXPECT_THAT(cfg.cluster.devices[0].threads == 2); /* device default */
    EXPECT_THAT(strcmp(cfg.cluster.devices[1].name, "weird: name #1") == 0);
    EXPECT_THAT(cfg.cluster.devices[1].backend == CONFIG_BACKEND_HIP);
    EXPECT_THAT(cfg.cluster.devices[1].index == 3);
    EXPECT_THAT(cfg.cluster.devices[1].slowdown == 2.5);
    EXPECT_THAT(cfg.cluster.devices[1].memory_gb == 24);
    EXPECT_THAT(strcmp(cfg.cluster.devices[2].name, "yes") == 0);
    EXPECT_THAT(strcmp(cfg.cluster.devices[3].name,
                  "t\tab \"q\" \\ \xc3\xa9") == 0);
    EXPECT_THAT(cfg.model.d_model == 96 && cfg.model.n_heads == 3);
    EXPECT_THAT(cfg.train.seed == UINT64_MAX);
    EXPECT_THAT(strcmp(cfg.data.path, "/tmp/with space/x.txt") == 0);
    check_round_trip(&cfg);
}

static void test_sets(void)
{
    char path[2048];
    source_path("configs/tiny.yaml", path, sizeof path);
    const char *sets[] = {
        "model.d_model=64",
        "model.d_model=256", /* later overrides win */
        "model.n_heads=8",
        "train.seed=18446744073709551615",
        "cluster.devices.0.backend=cuda",
        "cluster.devices[0].threads=8",
        "cluster.devices[0].price_per_hour=2.5e0",
        "data.path=\"runs/a b.txt\"",
        "checkpoint.dir=out # a comment",
        "--set=ignored", /* not special here: an unknown section */
    };
    config cfg;
    moe_error err;
    EXPECT_THAT(config_load(&cfg, path, sets, 9, &err) == 0);
    EXPECT_THAT(cfg.model.d_model == 256);
    EXPECT_THAT(cfg.model.n_heads == 8);
    EXPECT_THAT(cfg.model.n_layers == 2); /* from the file */
    EXPECT_THAT(cfg.train.seed == UINT64_MAX);
    EXPECT_THAT(cfg.cluster.devices[0].backend == CONFIG_BACKEND_CUDA);
    EXPECT_THAT(cfg.cluster.devices[0].threads == 8);
    EXPECT_THAT(cfg.cluster.devices[0].price_per_hour == 2.5);
    EXPECT_THAT(strcmp(cfg.data.path, "runs/a b.txt") == 0);
    EXPECT_THAT(strcmp(cfg.checkpoint.dir, "out") == 0);
    check_round_trip(&cfg);

    EXPECT_THAT(config_load(&cfg, path, sets, 10, &err) == -1);
    EXPECT_THAT(strcmp(err.message,
                  "--set:1:1: unknown section \"--set\" (expected one of: "
                  "cluster, model, moe, balance, train, data, checkpoint, "
                  "plan, launcher)\n"
                  "  --set=ignored\n"
                  "  ^") == 0);

    /* Setting a shorter string leaves no stale bytes behind. */
    const char *shorter[] = {"checkpoint.dir=a"};
    config a, b;
    EXPECT_THAT(config_load(&a, path, shorter, 1, &err) == 0);
    EXPECT_THAT(config_load(&b, path, NULL, 0, &err) == 0);
    memset(b.checkpoint.dir, 0, sizeof b.checkpoint.dir);
    b.checkpoint.dir[0] = 'a';
    EXPECT_THAT(memcmp(&a, &b, sizeof a) == 0);

    /* Cross-field checks run after all overrides. */
    const char *fixed[] = {"model.n_heads=6", "model.d_model=96"};
    EXPECT_THAT(config_load(&cfg, path, fixed, 2, &err) == 0);
    const char *broken[] = {"model.d_model=96", "model.n_heads=5"};
    EXPECT_THAT(config_load(&cfg, path, broken, 2, &err) == -1);
    EXPECT_THAT(strcmp(err.message,
                  "--set:1:1: model.n_heads: model.d_model (96) must be a "
                  "multiple of model.n_heads (5)\n"
                  "  model.n_heads=5\n"
                  "  ^") == 0);
}

/* A whole list in --set, and entries appended to it, as YAML. */
static void test_set_lists(void)
{
    char path[2048];
    source_path("configs/tiny.yaml", path, sizeof path);
    config cfg;
    moe_error err;
    const char *replace[] = {
        "cluster.devices=[{name: a, backend: cpu, threads: 1}, "
        "{name: \"b c\", backend: cpu, slowdown: 3}]",
        "cluster.devices+={name: d, backend: cuda, index: 2}",
        "cluster.devices+=[{name: e, backend: cpu}, {name: f, backend: hip}]",
        "cluster.devices.1.memory_gb=8", /* the new entries are indexed */
    };
    EXPECT_THAT(config_load(&cfg, path, replace, 4, &err) == 0);
    EXPECT_THAT(cfg.cluster.device_count == 5);
    EXPECT_THAT(strcmp(cfg.cluster.devices[0].name, "a") == 0);
    EXPECT_THAT(cfg.cluster.devices[0].threads == 1);
    EXPECT_THAT(strcmp(cfg.cluster.devices[1].name, "b c") == 0);
    EXPECT_THAT(cfg.cluster.devices[1].slowdown == 3.0);
    EXPECT_THAT(cfg.cluster.devices[1].memory_gb == 8.0);
    EXPECT_THAT(cfg.cluster.devices[1].threads == 2); /* the default */
    EXPECT_THAT(cfg.cluster.devices[2].backend == CONFIG_BACKEND_CUDA);
    EXPECT_THAT(cfg.cluster.devices[2].index == 2);
    EXPECT_THAT(strcmp(cfg.cluster.devices[4].name, "f") == 0);
    EXPECT_THAT(cfg.cluster.devices[4].backend == CONFIG_BACKEND_HIP);
    check_round_trip(&cfg);

    const char *bad_value[] = {"cluster.devices=[{name: a, backend: tpu}]"};
    EXPECT_THAT(config_load(&cfg, path, bad_value, 1, &err) == -1);
    EXPECT_THAT(strcmp(err.message,
                  "--set:1:37: cluster.devices[0].backend: expected one of "
                  "cpu, cuda, hip, got \"tpu\"\n"
                  "  cluster.devices=[{name: a, backend: tpu}]\n"
                  "                                      ^") == 0);
    const char *scalar[] = {"model.n_layers+=1"};
    EXPECT_THAT(config_load(&cfg, path, scalar, 1, &err) == -1);
    EXPECT_THAT(strstr(err.message, "--set:1:15: model.n_layers: += appends "
                                    "to a list") == err.message);
    const char *too_many[64];
    for (int i = 0; i < 64; i++)
        too_many[i] = "cluster.devices+={name: x, backend: cpu}";
    EXPECT_THAT(config_load(&cfg, path, too_many, 64, &err) == -1);
    EXPECT_THAT(strstr(err.message, "64 entries and 1 more is over the "
                                    "most, 64") != NULL);
}

static void test_errors(void)
{
    config cfg;
    moe_error err;
    EXPECT_THAT(config_load(&cfg, "/nonexistent/x.yaml", NULL, 0, &err) == -1);
    EXPECT_THAT(strcmp(err.message, "/nonexistent/x.yaml: no such file") == 0);

    /* A NULL error record is allowed. */
    EXPECT_THAT(config_load_text(&cfg, "t.yaml", "model: 1\n", 9, NULL, 0,
                            NULL) == -1);

    /* A warmup fixed by a later --set no longer fails; the error names the
     * key set last. */
    const char *text = "train:\n  steps: 50\n";
    EXPECT_THAT(config_load_text(&cfg, "t.yaml", text, strlen(text), NULL, 0,
                            &err) == -1);
    EXPECT_THAT(strcmp(err.message,
                  "t.yaml:2:3: train.steps: train.warmup_steps (100) must "
                  "not exceed train.steps (50)\n"
                  "    steps: 50\n"
                  "    ^") == 0);
    const char *fix[] = {"train.warmup_steps=10"};
    EXPECT_THAT(config_load_text(&cfg, "t.yaml", text, strlen(text), fix, 1,
                            &err) == 0);

    /* A very long line is cut around the column and the message fits. */
    char long_text[4096];
    int n = snprintf(long_text, sizeof long_text, "data: {path: \"");
    for (int i = 0; i < 400; i++)
        long_text[n++] = 'a';
    n += snprintf(long_text + n, sizeof long_text - (size_t)n,
                  "\", val_fraction: 2}\n");
    EXPECT_THAT(config_load_text(&cfg, "long.yaml", long_text, (size_t)n, NULL, 0,
                            &err) == -1);
    EXPECT_THAT(strlen(err.message) < sizeof err.message - 1);
    EXPECT_THAT(strstr(err.message, "data.val_fraction: 2 is out of range") !=
           NULL);
}

int main(int argc, char **argv)
{
    snprintf(root, sizeof root, "%s", argc > 1 ? argv[1] : ".");
    test_defaults();
    test_presets();
    test_multi_device();
    test_sets();
    test_set_lists();
    test_errors();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    puts("config unit tests passed");
    return 0;
}
