#include "engine/trainer/bench.h"
#include "engine/core/clock.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>

#include "engine/trainer/train.h"
#include "kernels/cpu/cpu_backend.h"
#include "engine/core/stats.h"

/* What one measured moectl run reports. */
typedef struct run_result {
    int ok;
    double tokens_per_s;     /* median over measured steps */
    double step_ms;          /* median */
    double flops_per_token;
    double peak_rss_mb;      /* of the process that trained */
    double loss_first, loss_last;
    size_t params, active_params;
    int measured_steps;
    /* Mean milliseconds per measured step. */
    double forward_ms[MODEL_PART_COUNT], backward_ms[MODEL_PART_COUNT];
    double data_ms, zero_grad_ms, optimizer_ms;
    char error[512];
} run_result;

typedef struct measure_request {
    const config *cfg;
    int warmup, steps;
} measure_request;

/* Trains cfg for warmup + steps steps in this process and describes the
 * measured ones. */
static json_t *measure_training(void *arg)
{
    const measure_request *req = arg;
    const config *cfg = req->cfg;
    int warmup = req->warmup, steps = req->steps;
    moe_error err = {{0}};
    trainer *t = NULL;
    json_t *out;
    comm alone = {.rank = 0, .world = 1};
    if (trainer_create(&t, cfg, &alone, &err) < 0) {
        out = json_pack("{s:s}", "error", err.message);
    } else {
        double *tokens_per_s = calloc((size_t)steps, sizeof(double));
        double *step_ms = calloc((size_t)steps, sizeof(double));
        double loss_first = NAN, loss_last = NAN;
        step_stats s;
        for (int i = 0; i < warmup; i++)
            trainer_step(t, &s, &err); /* one rank: cannot fail */
        model_profile_reset(t->model);
        t->data_s = t->zero_grad_s = t->optimizer_s = 0;
        for (int i = 0; i < steps; i++) {
            trainer_step(t, &s, &err); /* one rank: cannot fail */
            tokens_per_s[i] = s.tokens_per_s;
            step_ms[i] = s.step_s * 1e3;
            if (i == 0)
                loss_first = s.loss;
            loss_last = s.loss;
        }
        json_t *forward = json_array(), *backward = json_array();
        for (int p = 0; p < MODEL_PART_COUNT; p++) {
            json_array_append_new(forward, json_real(
                t->model->profile.forward_s[p] * 1e3 / steps));
            json_array_append_new(backward, json_real(
                t->model->profile.backward_s[p] * 1e3 / steps));
        }
        out = json_pack(
            "{s:f, s:f, s:f, s:f, s:f, s:I, s:I, s:i, s:o, s:o, s:f, s:f, "
            "s:f}",
            "tokens_per_s", stats_median(tokens_per_s, steps),
            "step_ms", stats_median(step_ms, steps),
            "flops_per_token", model_flops_per_token(t->model),
            "loss_first", loss_first, "loss_last", loss_last,
            "params", (json_int_t)t->model->param_count,
            "active_params", (json_int_t)model_active_params(t->model),
            "steps", steps, "forward_ms", forward, "backward_ms", backward,
            "data_ms", t->data_s * 1e3 / steps,
            "zero_grad_ms", t->zero_grad_s * 1e3 / steps,
            "optimizer_ms", t->optimizer_s * 1e3 / steps);
        free(tokens_per_s);
        free(step_ms);
    }
    trainer_destroy(t);
    return out;
}

/* Runs fn in a fresh process and returns the JSON it produced (NULL on
 * failure, with the reason in error). Every measurement runs this way:
 * the peak resident memory is then the measurement's own, and this process
 * never starts OpenMP threads, which do not survive a fork. */
static json_t *run_in_child(json_t *(*fn)(void *), void *arg,
                            double *peak_rss_mb, char *error,
                            size_t error_size)
{
    int fds[2];
    if (pipe(fds) < 0) {
        snprintf(error, error_size, "pipe: %s", strerror(errno));
        return NULL;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(error, error_size, "fork: %s", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return NULL;
    }
    if (pid == 0) {
        close(fds[0]);
        json_t *out = fn(arg);
        char *text = out ? json_dumps(out, JSON_COMPACT) : NULL;
        size_t length = text ? strlen(text) : 0;
        for (size_t done = 0; done < length;) {
            ssize_t n = write(fds[1], text + done, length - done);
            if (n <= 0)
                break;
            done += (size_t)n;
        }
        close(fds[1]);
        _exit(text ? 0 : 1);
    }
    close(fds[1]);
    char *text = NULL;
    size_t length = 0, capacity = 0;
    for (;;) {
        if (length + 4096 > capacity) {
            capacity = capacity ? capacity * 2 : 65536;
            char *grown = realloc(text, capacity);
            if (!grown)
                break;
            text = grown;
        }
        ssize_t n = read(fds[0], text + length, capacity - length - 1);
        if (n <= 0)
            break;
        length += (size_t)n;
    }
    close(fds[0]);
    int status = 0;
    struct rusage usage;
    memset(&usage, 0, sizeof usage);
    wait4(pid, &status, 0, &usage);
    if (peak_rss_mb)
        *peak_rss_mb = usage.ru_maxrss / 1024.0;
    if (!text) {
        snprintf(error, error_size, "out of memory");
        return NULL;
    }
    text[length] = '\0';
    json_error_t jerr;
    json_t *in = json_loads(text, 0, &jerr);
    free(text);
    if (!in || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        json_decref(in);
        snprintf(error, error_size, "the measuring process failed");
        return NULL;
    }
    return in;
}

static void measure(const config *cfg, int warmup, int steps, run_result *r)
{
    memset(r, 0, sizeof *r);
    measure_request req = {cfg, warmup, steps};
    json_t *in = run_in_child(measure_training, &req, &r->peak_rss_mb,
                              r->error, sizeof r->error);
    if (!in)
        return;
    const char *message = NULL;
    if (json_unpack(in, "{s:s}", "error", &message) == 0) {
        snprintf(r->error, sizeof r->error, "%s", message);
    } else {
        json_int_t params = 0, active = 0;
        json_t *forward = NULL, *backward = NULL;
        if (json_unpack(in,
                        "{s:F, s:F, s:F, s:F, s:F, s:I, s:I, s:i, s:o, s:o, "
                        "s:F, s:F, s:F}",
                        "tokens_per_s", &r->tokens_per_s, "step_ms",
                        &r->step_ms, "flops_per_token", &r->flops_per_token,
                        "loss_first", &r->loss_first, "loss_last",
                        &r->loss_last, "params", &params, "active_params",
                        &active, "steps", &r->measured_steps, "forward_ms",
                        &forward, "backward_ms", &backward, "data_ms",
                        &r->data_ms, "zero_grad_ms", &r->zero_grad_ms,
                        "optimizer_ms", &r->optimizer_ms) == 0) {
            r->params = (size_t)params;
            r->active_params = (size_t)active;
            for (int p = 0; p < MODEL_PART_COUNT; p++) {
                r->forward_ms[p] = json_real_value(json_array_get(forward, p));
                r->backward_ms[p] =
                    json_real_value(json_array_get(backward, p));
            }
            r->ok = 1;
        } else {
            snprintf(r->error, sizeof r->error, "unreadable measurement");
        }
    }
    json_decref(in);
}

typedef struct sgemm_request {
    int n, threads, reps;
    /* The bench model's expert GEMMs: `experts` groups of `rows` rows,
     * (C -> 2F) and (F -> C). */
    int experts, rows, C, F;
} sgemm_request;

/* GFLOP/s of one grouped forward (experts per thread, as the model runs
 * them) of req's expert shape, IC -> OC, median of reps. Under bf16 every
 * rep first voids the weights' copies: each product pays its rounding. */
static double grouped_rate(const backend *be, const sgemm_request *req,
                           int IC, int OC, const float *inp,
                           const float *const *w, float *out, double *gflops)
{
    int G = req->experts;
    int rows[64];
    for (int g = 0; g < G; g++)
        rows[g] = req->rows;
    for (int i = 0; i <= req->reps; i++) {
        double start = clock_monotonic_s();
        if (be->ops->params_changed)
            be->ops->params_changed(be->ctx);
        be->ops->grouped_matmul_forward(be->ctx, out, inp, w, rows, G, IC,
                                        OC);
        if (i > 0)
            gflops[i - 1] = 2.0 * G * req->rows * (double)IC * OC /
                            (clock_monotonic_s() - start) / 1e9;
    }
    return stats_median(gflops, req->reps);
}

/* Both expert products of req on a backend into rate[2]; -1 when out of
 * memory. */
static void expert_rates(const backend *be, const sgemm_request *req,
                         double rate[2], double *gflops)
{
    int G = req->experts, C = req->C, F = req->F;
    size_t in_n = (size_t)G * req->rows * (C > F ? C : F);
    size_t out_n = (size_t)G * req->rows * 2 * F + (size_t)G * req->rows * C;
    size_t w_n = (size_t)G * 2 * F * C;
    float *inp = malloc(in_n * sizeof *inp), *out = malloc(out_n * sizeof *out);
    float *wmem = malloc(w_n * sizeof *wmem);
    const float *w13[64], *w2[64];
    rate[0] = rate[1] = -1;
    if (inp && out && wmem && G <= 64) {
        rng r;
        rng_seed(&r, 7, 0);
        for (size_t i = 0; i < in_n; i++)
            inp[i] = (float)rng_normal(&r);
        for (size_t i = 0; i < w_n; i++)
            wmem[i] = (float)rng_normal(&r) * 0.05f;
        for (int g = 0; g < G; g++) {
            w13[g] = wmem + (size_t)g * 2 * F * C;
            w2[g] = w13[g]; /* (C, F) fits in the same (2F, C) block */
        }
        rate[0] = grouped_rate(be, req, C, 2 * F, inp, w13, out, gflops);
        rate[1] = grouped_rate(be, req, F, C, inp, w2, out, gflops);
    }
    free(inp);
    free(out);
    free(wmem);
}

/* GFLOP/s of the backend's own GEMM (out = inp·Wᵀ) at n³: the practical
 * limit every model GEMM is measured against. Median of `reps`. */
static json_t *measure_sgemm_child(void *arg)
{
    const sgemm_request *req = arg;
    int n = req->n, threads = req->threads, reps = req->reps;
    backend be;
    if (cpu_backend_init(&be, threads) < 0)
        return NULL;
    size_t count = (size_t)n * n;
    float *a = malloc(count * sizeof(float)), *b = malloc(count * sizeof(float)),
          *c = malloc(count * sizeof(float));
    double *gflops = calloc((size_t)reps, sizeof(double));
    double result = NAN, backend_result = NAN, bf16_result = -1;
    double expert_fp32[2] = {-1, -1}, expert_bf16[2] = {-1, -1};
    char bf16_how[256] = "";
    if (a && b && c && gflops) {
        rng r;
        rng_seed(&r, 5, 0);
        for (size_t i = 0; i < count; i++) {
            a[i] = (float)rng_normal(&r);
            b[i] = (float)rng_normal(&r);
        }
        /* OpenBLAS itself on all threads: the figure the model is held
         * against. Then the backend's GEMM, which may split a product
         * into one single-threaded GEMM per thread. */
        openblas_set_num_threads(threads);
        for (int i = 0; i <= reps; i++) {
            double start = clock_monotonic_s();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n,
                        1.0f, a, n, b, n, 0.0f, c, n);
            if (i > 0)
                gflops[i - 1] = 2.0 * n * n * (double)n / (clock_monotonic_s() - start) /
                                1e9;
        }
        result = stats_median(gflops, reps);
        for (int i = 0; i <= reps; i++) {
            double start = clock_monotonic_s();
            be.ops->matmul_forward(be.ctx, c, a, b, n, n, n);
            if (i > 0)
                gflops[i - 1] = 2.0 * n * n * (double)n / (clock_monotonic_s() - start) /
                                1e9;
        }
        backend_result = stats_median(gflops, reps);
        expert_rates(&be, req, expert_fp32, gflops);
        /* The bf16 GEMM (oneDNN), where this build has it: the rate a
         * bf16 run is held against. */
        backend bf;
        char why[256];
        if (cpu_backend_init_bf16(&bf, threads, why, sizeof why) == 0) {
            for (int i = 0; i <= reps; i++) {
                double start = clock_monotonic_s();
                bf.ops->matmul_forward(bf.ctx, c, a, b, n, n, n);
                if (i > 0)
                    gflops[i - 1] = 2.0 * n * n * (double)n /
                                    (clock_monotonic_s() - start) / 1e9;
            }
            bf16_result = stats_median(gflops, reps);
            expert_rates(&bf, req, expert_bf16, gflops);
            cpu_backend_describe(&bf, bf16_how, sizeof bf16_how);
            cpu_backend_finish(&bf);
        } else {
            snprintf(bf16_how, sizeof bf16_how, "%s", why);
        }
    }
    free(a);
    free(b);
    free(c);
    free(gflops);
    cpu_backend_finish(&be);
    return json_pack("{s:f, s:f, s:f, s:s, s:[f,f], s:[f,f]}", "openblas",
                     result, "backend", backend_result, "bf16", bf16_result,
                     "bf16_how", bf16_how, "expert_fp32", expert_fp32[0],
                     expert_fp32[1], "expert_bf16", expert_bf16[0],
                     expert_bf16[1]);
}

/* The GEMM rates at n³: OpenBLAS's, the backend's and the bf16 backend's
 * (GFLOP/s, each the median of reps; bf16 -1 without oneDNN, with the
 * reason in bf16_how, else what oneDNN chose). */
typedef struct gemm_rates {
    double openblas, backend, bf16;
    char bf16_how[256];
    /* The expert products (C -> 2F, F -> C), OpenBLAS and bf16; -1: not
     * measured. */
    double expert_fp32[2], expert_bf16[2];
} gemm_rates;

static void measure_sgemm(const config *cfg, int n, int threads, int reps,
                          gemm_rates *g)
{
    int experts = cfg->moe.n_experts < 64 ? cfg->moe.n_experts : 64;
    sgemm_request req = {
        n, threads, reps, experts,
        cfg->train.batch_size * cfg->model.seq_len * cfg->moe.top_k /
            cfg->moe.n_experts,
        cfg->model.d_model, cfg->moe.expert_hidden};
    char error[256];
    const char *how = "";
    g->openblas = g->backend = NAN;
    g->bf16 = -1;
    for (int i = 0; i < 2; i++)
        g->expert_fp32[i] = g->expert_bf16[i] = -1;
    json_t *in = run_in_child(measure_sgemm_child, &req, NULL, error,
                              sizeof error);
    if (in)
        json_unpack(in, "{s:F, s:F, s:F, s:s, s:[F,F], s:[F,F]}", "openblas",
                    &g->openblas, "backend", &g->backend, "bf16", &g->bf16,
                    "bf16_how", &how, "expert_fp32", &g->expert_fp32[0],
                    &g->expert_fp32[1], "expert_bf16", &g->expert_bf16[0],
                    &g->expert_bf16[1]);
    snprintf(g->bf16_how, sizeof g->bf16_how, "%s", how);
    json_decref(in);
}

typedef struct peer_result {
    int ok;
    int threads;
    int autocast; /* torch.autocast("cpu", bfloat16) */
    double tokens_per_s;
    double peak_rss_mb;
    double loss_first, loss_last;
    char torch_version[32];
    char error[512];
} peer_result;

/* Runs the PyTorch peer with the same model, step and data. Variables
 * moectl set for its own threads are removed from the peer's environment,
 * so the peer runs as it would on its own. */
static void measure_peer(const bench_options *opt, const config *cfg,
                         int threads, int autocast, peer_result *r)
{
    memset(r, 0, sizeof *r);
    r->threads = threads;
    r->autocast = autocast;
    char shell_line[4096];
    snprintf(shell_line, sizeof shell_line,
             "env -u OMP_WAIT_POLICY -u OPENBLAS_THREAD_TIMEOUT "
             "-u OPENBLAS_CORETYPE %s '%s' --corpus '%s' --d-model %d "
             "--layers %d --heads %d --seq %d --batch %d --experts %d "
             "--top-k %d --shared %d --expert-hidden %d --aux %.17g "
             "--z %.17g --lr %.17g --min-lr %.17g --warmup %d --steps %d "
             "--weight-decay %.17g --grad-clip %.17g --rope-theta %.17g "
             "--eps %.17g --val-fraction %.17g --seed %llu --threads %d "
             "--warmup-steps %d --measure-steps %d%s 2>/dev/null",
             opt->python, opt->peer, cfg->data.path, cfg->model.d_model,
             cfg->model.n_layers, cfg->model.n_heads, cfg->model.seq_len,
             cfg->train.batch_size, cfg->moe.n_experts, cfg->moe.top_k,
             cfg->moe.n_shared, cfg->moe.expert_hidden, cfg->moe.aux_loss_coef,
             cfg->moe.z_loss_coef, cfg->train.lr, cfg->train.min_lr,
             cfg->train.warmup_steps, cfg->train.steps,
             cfg->train.weight_decay, cfg->train.grad_clip,
             cfg->model.rope_theta, cfg->model.norm_eps,
             cfg->data.val_fraction, (unsigned long long)cfg->train.seed,
             threads, opt->warmup, opt->steps,
             autocast ? " --autocast" : "");
    FILE *p = popen(shell_line, "r");
    if (!p) {
        snprintf(r->error, sizeof r->error, "cannot start %s", opt->python);
        return;
    }
    char line[4096], last[4096] = "";
    while (fgets(line, sizeof line, p))
        if (line[0] == '{')
            snprintf(last, sizeof last, "%s", line);
    int status = pclose(p);
    json_error_t jerr;
    json_t *in = json_loads(last, 0, &jerr);
    const char *version = "";
    if (status != 0 || !in ||
        json_unpack(in, "{s:F, s:F, s:F, s:F, s:s}", "tokens_per_s",
                    &r->tokens_per_s, "peak_rss_mb", &r->peak_rss_mb,
                    "loss_first", &r->loss_first, "loss_last", &r->loss_last,
                    "torch", &version) != 0) {
        /* The command is long: print it here rather than truncate it. */
        fprintf(stderr, "moectl bench: peer command: %s\n", shell_line);
        snprintf(r->error, sizeof r->error,
                 "the PyTorch peer failed (exit status %d); install "
                 "python3-torch with scripts/setup.sh --bench, or skip the "
                 "peer with --no-peer", status);
    } else {
        snprintf(r->torch_version, sizeof r->torch_version, "%s", version);
        r->ok = 1;
    }
    json_decref(in);
}

static void print_profile(const char *what, const run_result *r)
{
    double total = r->step_ms;
    printf("\nWhere a step goes%s (mean ms per step over %d steps; step "
           "median %.1f ms):\n", what, r->measured_steps, total);
    printf("  %-16s %9s %9s %9s %6s\n", "part", "forward", "backward",
           "total", "share");
    double sum = 0;
    for (int p = 0; p < MODEL_PART_COUNT; p++) {
        double t = r->forward_ms[p] + r->backward_ms[p];
        sum += t;
        printf("  %-16s %9.2f %9.2f %9.2f %5.1f%%\n", model_part_names[p],
               r->forward_ms[p], r->backward_ms[p], t, 100 * t / total);
    }
    const struct { const char *name; double ms; } rest[] = {
        {"zero_grad", r->zero_grad_ms},
        {"optimizer", r->optimizer_ms},
        {"data", r->data_ms},
    };
    for (size_t i = 0; i < sizeof rest / sizeof rest[0]; i++) {
        sum += rest[i].ms;
        printf("  %-16s %9s %9s %9.2f %5.1f%%\n", rest[i].name, "", "",
               rest[i].ms, 100 * rest[i].ms / total);
    }
    printf("  %-16s %9s %9s %9.2f %5.1f%%\n", "(sum)", "", "", sum,
           100 * sum / total);
}

/* One row of the rank scaling: the bench model on `ranks` CPU ranks
 * (threads split between them), run through `moectl run`, which starts
 * mpirun. With more than one rank, expert 0.0 moves to rank 1 after the
 * warm-up, to time a migration. */
typedef struct ranks_row {
    int ok;
    double tokens_per_s;  /* median of the measured steps */
    double step_ms;       /* median */
    double alltoall_share; /* rank 0's all-to-all time / step time */
    double move_ms;       /* the migration, NAN on one rank */
    char error[256];
} ranks_row;

static void measure_ranks(const config *base, const bench_options *opt,
                          int ranks, ranks_row *row)
{
    memset(row, 0, sizeof *row);
    row->move_ms = NAN;
    config cfg = *base;
    int threads = base->cluster.devices[0].threads / ranks;
    cfg.cluster.device_count = ranks;
    for (int r = 0; r < ranks; r++) {
        cfg.cluster.devices[r] = base->cluster.devices[0];
        snprintf(cfg.cluster.devices[r].name,
                 sizeof cfg.cluster.devices[r].name, "cpu%d", r);
        cfg.cluster.devices[r].threads = threads > 0 ? threads : 1;
    }
    char dir[] = "/tmp/moectl-bench-XXXXXX";
    if (!mkdtemp(dir)) {
        snprintf(row->error, sizeof row->error, "mkdtemp: %s",
                 strerror(errno));
        return;
    }
    char yaml[64], metrics[64], command_line[6144], self[4096] = "";
    ssize_t self_length = readlink("/proc/self/exe", self, sizeof self - 1);
    self[self_length > 0 ? self_length : 0] = '\0';
    snprintf(yaml, sizeof yaml, "%s/ranks.yaml", dir);
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", dir);
    FILE *f = fopen(yaml, "w");
    if (!f) {
        snprintf(row->error, sizeof row->error, "cannot write %s", yaml);
        return;
    }
    config_print(&cfg, f);
    fclose(f);
    int steps = opt->warmup + opt->steps;
    char move[64] = "";
    if (ranks > 1)
        snprintf(move, sizeof move, "--at '%d:move 0.0 1'", opt->warmup);
    snprintf(command_line, sizeof command_line,
             "MOECTL_RUNS_DIR=%s/runs '%s' run %s --steps %d --metrics %s "
             "%s --set train.eval_every=0 --set checkpoint.every=0 "
             "--set checkpoint.dir=%s/ckpt >/dev/null 2>&1",
             dir, self, yaml, steps, metrics, move, dir);
    int status = self[0] ? system(command_line) : -1;
    FILE *in = status == 0 ? fopen(metrics, "r") : NULL;
    if (!in) {
        snprintf(row->error, sizeof row->error,
                 "the %d-rank run failed (exit status %d)", ranks, status);
    } else {
        double *tps = calloc((size_t)steps, sizeof(double));
        double *ms = calloc((size_t)steps, sizeof(double));
        double share = 0;
        int n = 0;
        char line[1 << 16];
        while (tps && ms && fgets(line, sizeof line, in)) {
            record_value r;
            char why[256];
            if (record_decode(line, &r, why, sizeof why) < 0) {
                record_free(&r);
                continue;
            }
            int step = (int)record_int(&r, RECORD_STEP_step, 0);
            if (r.type == RECORD_TYPE_STEP && step > opt->warmup &&
                n < steps) {
                tps[n] = record_real(&r, RECORD_STEP_tokens_per_s);
                ms[n] = record_real(&r, RECORD_STEP_step_ms);
                record_value rank0;
                record_part(&r, RECORD_STEP_ranks, 0, &rank0);
                share += record_real(&rank0, RECORD_RANK_alltoall_ms) / ms[n];
                n++;
            } else if (r.type == RECORD_TYPE_EVENT) {
                row->move_ms = record_real(&r, RECORD_EVENT_duration_ms);
            }
            record_free(&r);
        }
        fclose(in);
        if (n > 0) {
            row->tokens_per_s = stats_median(tps, n);
            row->step_ms = stats_median(ms, n);
            row->alltoall_share = share / n;
            row->ok = 1;
        } else {
            snprintf(row->error, sizeof row->error, "no measured steps");
        }
        free(tps);
        free(ms);
    }
    snprintf(command_line, sizeof command_line, "rm -rf '%s'", dir);
    if (system(command_line) != 0)
        fprintf(stderr, "moectl bench: could not remove %s\n", dir);
}

/* The best of each figure over the interleaved rounds. */
typedef struct bench_best {
    double sgemm, backend_gemm, bf16_gemm;
    double expert_fp32[2], expert_bf16[2]; /* gemm_rates' */
    char bf16_how[256];
    run_result run, run_bf16;
    peer_result peer, peer_bf16;
} bench_best;

static void keep_best_run(run_result *best, const run_result *r)
{
    if (!best->ok || r->tokens_per_s > best->tokens_per_s)
        *best = *r;
}

/* The bench's configuration with every device's GEMMs in bf16. */
static config bf16_config(const config *base)
{
    config cfg = *base;
    for (int i = 0; i < cfg.cluster.device_count; i++)
        cfg.cluster.devices[i].precision = CONFIG_PRECISION_BF16;
    return cfg;
}

/* The peer at 1 and 2 threads, fp32 then under bf16 autocast. Returns 0,
 * or 1 when it failed (said on stderr). */
static int peer_round(const config *base, const bench_options *opt,
                      bench_best *best)
{
    for (int autocast = 0; autocast <= 1; autocast++)
        for (int t = 1; t <= 2; t++) {
            peer_result p;
            measure_peer(opt, base, t, autocast, &p);
            if (!p.ok) {
                fprintf(stderr, "moectl bench: %s\n", p.error);
                return 1;
            }
            printf("  PyTorch %s%s, %d thread%s: %.0f tokens/s, peak RSS "
                   "%.0f MiB\n", p.torch_version,
                   autocast ? " bf16 autocast" : "", t, t > 1 ? "s" : "",
                   p.tokens_per_s, p.peak_rss_mb);
            peer_result *keep = autocast ? &best->peer_bf16 : &best->peer;
            if (!keep->ok || p.tokens_per_s > keep->tokens_per_s)
                *keep = p;
        }
    return 0;
}

/* The expert GEMMs' rates, OpenBLAS and bf16 (when measured). */
static void print_expert_rates(const config *cfg, const char *indent,
                               const double fp32[2], const double bf16[2])
{
    if (fp32[0] <= 0)
        return;
    int C = cfg->model.d_model, F = cfg->moe.expert_hidden;
    printf("%sexpert GEMMs (%d x %d rows, %d->%d and %d->%d, experts per "
           "thread): OpenBLAS %.1f and %.1f GFLOP/s", indent,
           cfg->moe.n_experts < 64 ? cfg->moe.n_experts : 64,
           cfg->train.batch_size * cfg->model.seq_len * cfg->moe.top_k /
               cfg->moe.n_experts,
           C, 2 * F, F, C, fp32[0], fp32[1]);
    if (bf16[0] > 0)
        printf(", bf16 %.1f and %.1f (%.2fx, %.2fx)", bf16[0], bf16[1],
               bf16[0] / fp32[0], bf16[1] / fp32[1]);
    printf("\n");
}

/* One round: the GEMM rates, moectl (and, when the configuration is fp32
 * and this build has oneDNN, moectl in bf16), and (with_peer) the peer.
 * Returns 0; 1 when the peer failed (later rounds go on without it); -1
 * when moectl's own run failed. */
static int bench_round(const config *base, const bench_options *opt,
                       int threads, int with_peer, bench_best *best)
{
    gemm_rates g;
    measure_sgemm(base, 2048, threads, 5, &g);
    printf("  OpenBLAS sgemm 2048^3 (%d threads): %.1f GFLOP/s; the "
           "backend's GEMM: %.1f GFLOP/s\n", threads, g.openblas, g.backend);
    if (g.bf16 > 0)
        printf("  bf16 GEMM 2048^3 (%s): %.1f GFLOP/s\n", g.bf16_how,
               g.bf16);
    print_expert_rates(base, "  ", g.expert_fp32, g.expert_bf16);
    for (int i = 0; i < 2; i++) {
        best->expert_fp32[i] = fmax(best->expert_fp32[i], g.expert_fp32[i]);
        best->expert_bf16[i] = fmax(best->expert_bf16[i], g.expert_bf16[i]);
    }
    if (!(g.openblas <= best->sgemm))
        best->sgemm = g.openblas;
    if (!(g.backend <= best->backend_gemm))
        best->backend_gemm = g.backend;
    if (g.bf16 > best->bf16_gemm || !best->bf16_how[0]) {
        best->bf16_gemm = g.bf16 > best->bf16_gemm ? g.bf16 : best->bf16_gemm;
        snprintf(best->bf16_how, sizeof best->bf16_how, "%s", g.bf16_how);
    }

    run_result r;
    measure(base, opt->warmup, opt->steps, &r);
    if (!r.ok) {
        fprintf(stderr, "moectl bench: %s\n", r.error);
        return -1;
    }
    printf("  moectl: %.0f tokens/s, step %.1f ms, peak RSS %.0f MiB\n",
           r.tokens_per_s, r.step_ms, r.peak_rss_mb);
    keep_best_run(&best->run, &r);
    if (g.bf16 > 0 &&
        base->cluster.devices[0].precision == CONFIG_PRECISION_FP32) {
        config cfg = bf16_config(base);
        measure(&cfg, opt->warmup, opt->steps, &r);
        if (r.ok) {
            printf("  moectl bf16: %.0f tokens/s, step %.1f ms, peak RSS "
                   "%.0f MiB\n", r.tokens_per_s, r.step_ms, r.peak_rss_mb);
            keep_best_run(&best->run_bf16, &r);
        } else {
            printf("  moectl bf16: %s\n", r.error);
        }
    }
    return with_peer && opt->peer ? peer_round(base, opt, best) : 0;
}

static void print_peer(const char *what, const peer_result *peer)
{
    printf("PyTorch %s%s (best at %d thread%s): %.0f tokens/s, peak RSS "
           "%.0f MiB; loss %.3f -> %.3f\n", peer->torch_version, what,
           peer->threads, peer->threads > 1 ? "s" : "", peer->tokens_per_s,
           peer->peak_rss_mb, peer->loss_first, peer->loss_last);
}

static void print_best(const config *base, const bench_options *opt,
                       int threads,
                       const bench_best *best)
{
    const run_result *run = &best->run, *bf = &best->run_bf16;
    const peer_result *peer = &best->peer, *peer_bf = &best->peer_bf16;
    double gflops = run->tokens_per_s * run->flops_per_token / 1e9;
    printf("\nbest of %d rounds:\n", opt->repeats);
    printf("OpenBLAS sgemm 2048^3 (%d threads): %.1f GFLOP/s (the backend's "
           "GEMM: %.1f)\n", threads, best->sgemm, best->backend_gemm);
    if (best->bf16_gemm > 0)
        printf("bf16 GEMM 2048^3 (%s): %.1f GFLOP/s\n", best->bf16_how,
               best->bf16_gemm);
    else
        printf("bf16 GEMM: none (%s)\n", best->bf16_how);
    print_expert_rates(base, "", best->expert_fp32, best->expert_bf16);
    printf("moectl: %.0f tokens/s (median of %d steps after %d warm-up), "
           "step %.1f ms, %.1f model GFLOP/s = %.0f%% of sgemm; "
           "peak RSS %.0f MiB\n",
           run->tokens_per_s, run->measured_steps, opt->warmup,
           run->step_ms, gflops, 100 * gflops / best->sgemm,
           run->peak_rss_mb);
    printf("  params %zu, active %zu, %.1f MFLOP/token; loss %.3f -> %.3f\n",
           run->params, run->active_params, run->flops_per_token / 1e6,
           run->loss_first, run->loss_last);
    double bf_gflops = bf->tokens_per_s * bf->flops_per_token / 1e9;
    if (bf->ok)
        printf("moectl bf16: %.0f tokens/s, step %.1f ms, %.1f model GFLOP/s "
               "= %.0f%% of the bf16 GEMM; %.2fx fp32; loss %.3f -> %.3f\n",
               bf->tokens_per_s, bf->step_ms, bf_gflops,
               100 * bf_gflops / best->bf16_gemm,
               bf->tokens_per_s / run->tokens_per_s, bf->loss_first,
               bf->loss_last);
    if (!peer->ok)
        return;
    print_peer("", peer);
    if (peer_bf->ok)
        print_peer(" bf16 autocast", peer_bf);
    double best_peer = peer->tokens_per_s;
    if (peer_bf->ok && peer_bf->tokens_per_s > best_peer)
        best_peer = peer_bf->tokens_per_s;
    printf("ratio moectl / PyTorch: %.2fx tokens/s, %.2fx peak memory\n",
           run->tokens_per_s / peer->tokens_per_s,
           run->peak_rss_mb / peer->peak_rss_mb);
    if (bf->ok)
        printf("ratio moectl bf16 / the best PyTorch figure: %.2fx tokens/s"
               "\n", bf->tokens_per_s / best_peer);
}

static void print_scaling(const config *base, const bench_options *opt)
{
    printf("\nScaling (moectl, median of %d steps after %d warm-up):\n",
           opt->scaling_steps, 2);
    printf("  %-22s %12s %10s %12s %12s\n", "variant", "tokens/s",
           "step ms", "optimizer ms", "GFLOP/s");
    static const int experts[] = {8, 16, 64};
    static const int seq[] = {128, 512};
    for (int i = 0; i < 5; i++) {
        config cfg = *base;
        char label[64];
        if (i < 3) {
            cfg.moe.n_experts = experts[i];
            snprintf(label, sizeof label, "experts %d, top-%d", experts[i],
                     cfg.moe.top_k);
        } else {
            cfg.model.seq_len = seq[i - 3];
            snprintf(label, sizeof label, "seq_len %d", seq[i - 3]);
        }
        run_result r;
        measure(&cfg, 2, opt->scaling_steps, &r);
        if (!r.ok) {
            printf("  %-22s %s\n", label, r.error);
            continue;
        }
        printf("  %-22s %12.0f %10.1f %12.1f %12.1f\n", label,
               r.tokens_per_s, r.step_ms, r.optimizer_ms,
               r.tokens_per_s * r.flops_per_token / 1e9);
    }
}

static void print_ranks(const config *base, const bench_options *opt)
{
    printf("\nRanks (the bench model on N CPU ranks under mpirun, threads "
           "split between them; median of %d steps after %d warm-up):\n",
           opt->steps, opt->warmup);
    printf("  %-6s %12s %10s %15s %18s\n", "ranks", "tokens/s", "step ms",
           "all-to-all share", "move one expert ms");
    for (int ranks = 1; ranks <= 4; ranks *= 2) {
        ranks_row r;
        measure_ranks(base, opt, ranks, &r);
        if (!r.ok) {
            printf("  %-6d %s\n", ranks, r.error);
            continue;
        }
        char move[32] = "-";
        if (ranks > 1)
            snprintf(move, sizeof move, "%.2f", r.move_ms);
        printf("  %-6d %12.0f %10.1f %14.1f%% %18s\n", ranks,
               r.tokens_per_s, r.step_ms, 100 * r.alltoall_share, move);
    }
}

int bench_run(const config *base, const bench_options *opt)
{
    int threads = base->cluster.devices[0].threads;
    printf("moectl bench: %s (%s), %d threads\n", base->name, base->source,
           threads);
    printf("model FLOPs per token = 6 x (active params - embedding) + "
           "12 x layers x d_model x seq_len\n\n");

    /* On a shared machine the capacity a process gets varies from minute
     * to minute, so every figure is measured `repeats` times, interleaved,
     * and the best of each is kept (the least disturbed run). */
    bench_best best = {.sgemm = NAN, .backend_gemm = NAN, .bf16_gemm = -1,
                       .expert_fp32 = {-1, -1}, .expert_bf16 = {-1, -1}};
    int status = 0;
    for (int rep = 0; rep < opt->repeats; rep++) {
        printf("round %d of %d:\n", rep + 1, opt->repeats);
        int round = bench_round(base, opt, threads, !status, &best);
        if (round < 0)
            return 1;
        status |= round;
    }
    print_best(base, opt, threads, &best);
    if (opt->scaling)
        print_scaling(base, opt);
    if (opt->ranks)
        print_ranks(base, opt);
    if (opt->profile) {
        print_profile("", &best.run);
        if (best.run_bf16.ok)
            print_profile(", bf16", &best.run_bf16);
    }
    return status;
}
