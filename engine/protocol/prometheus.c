#include "engine/protocol/prometheus.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/core/clock.h"
#include "moectl_build.h"

#if HAVE_MHD
#include <microhttpd.h>
#endif

struct prometheus {
    pthread_mutex_t lock; /* text: the HTTP thread reads it */
    char *text;
    char url[96];
    char textfile[4096];
#if HAVE_MHD
    struct MHD_Daemon *daemon;
#endif
    /* What the text is built from (rank 0's thread only). */
    json_t *run, *step;
    double val_loss;
    long long val_step, steps_total, checkpoints_total, last_checkpoint;
    long long commands_ok, commands_refused, plans_applied;
    int done; /* a summary came: 1 done, 2 stopped */
    int paused; /* the latest record's state (a step's or an event's) */
    double built_at, written_at; /* monotonic seconds */
};

enum { BUILD_EVERY_MS = 100, WRITE_EVERY_MS = 1000 };

/* ---- the exposition text ------------------------------------------------ */

typedef struct text_buf {
    char *data;
    size_t length, cap;
    int failed;
} text_buf;

static void put(text_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void put(text_buf *b, const char *fmt, ...)
{
    for (int tries = 0; tries < 2 && !b->failed; tries++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->data ? b->data + b->length : NULL,
                          b->data ? b->cap - b->length : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if (b->data && b->length + (size_t)n < b->cap) {
            b->length += (size_t)n;
            return;
        }
        size_t cap = (b->cap ? b->cap : 4096);
        while (cap <= b->length + (size_t)n)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            b->failed = 1;
            return;
        }
        b->data = grown;
        b->cap = cap;
    }
}

static void head(text_buf *b, const char *name, const char *type,
                 const char *help)
{
    put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void value(text_buf *b, double x)
{
    if (isnan(x))
        put(b, " NaN\n");
    else if (isinf(x))
        put(b, x > 0 ? " +Inf\n" : " -Inf\n");
    else
        put(b, " %.17g\n", x);
}

/* A label value with \, " and newlines escaped. */
static void label(text_buf *b, const char *key, const char *text, int last)
{
    put(b, "%s=\"", key);
    for (const char *p = text ? text : ""; *p; p++)
        put(b, "%s", *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n'
                                               ? "\\n"
                                               : (char[2]){*p, 0});
    put(b, "\"%s", last ? "}" : ",");
}

static double real_of(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

/* A gauge from a field of a record, scaled; nothing when null. */
static void gauge_field(text_buf *b, json_t *record, const char *key,
                        const char *name, double scale, const char *help)
{
    double x = real_of(record, key);
    if (!record || isnan(x))
        return;
    head(b, name, "gauge", help);
    put(b, "%s", name);
    value(b, x * scale);
}

/* A series of one unlabelled sample. */
static void single(text_buf *b, const char *name, const char *type, double x,
                   const char *help)
{
    head(b, name, type, help);
    put(b, "%s", name);
    value(b, x);
}

static void counter(text_buf *b, const char *name, double x, const char *help)
{
    single(b, name, "counter", x, help);
}

static void gauge(text_buf *b, const char *name, double x, const char *help)
{
    single(b, name, "gauge", x, help);
}

static void run_part(text_buf *b, json_t *run)
{
    if (!run)
        return;
    json_t *dir = json_object_get(run, "run_dir");
    head(b, "moectl_run_info", "gauge",
         "The run: its config, run_id and run directory (value 1).");
    put(b, "moectl_run_info{");
    label(b, "config", json_string_value(json_object_get(run, "config")), 0);
    label(b, "run_id", json_string_value(json_object_get(run, "run_id")), 0);
    label(b, "run_dir", json_is_string(dir) ? json_string_value(dir) : "", 1);
    put(b, " 1\n");
    gauge_field(b, run, "params", "moectl_parameters", 1,
                "Parameters of the model.");
    gauge_field(b, run, "active_params", "moectl_active_parameters", 1,
                "Parameters a token passes through.");
    gauge_field(b, run, "flops_per_token", "moectl_flops_per_token", 1,
                "Training FLOPs per token (the count behind MFU).");
    json_t *devices = json_object_get(run, "devices");
    const char *currency = json_string_value(json_object_get(run, "currency"));
    head(b, "moectl_device_peak_flops", "gauge",
         "A device's stated peak FLOP/s (peak_tflops).");
    for (size_t i = 0; i < json_array_size(devices); i++) {
        json_t *d = json_array_get(devices, i);
        put(b, "moectl_device_peak_flops{rank=\"%zu\",", i);
        label(b, "device", json_string_value(json_object_get(d, "name")), 1);
        value(b, real_of(d, "peak_tflops") * 1e12);
    }
    head(b, "moectl_device_price_per_hour", "gauge",
         "A device's price per hour, in the run's currency.");
    for (size_t i = 0; i < json_array_size(devices); i++) {
        json_t *d = json_array_get(devices, i);
        put(b, "moectl_device_price_per_hour{rank=\"%zu\",", i);
        label(b, "device", json_string_value(json_object_get(d, "name")), 0);
        label(b, "currency", currency, 1);
        value(b, real_of(d, "price_per_hour"));
    }
}

static const char *const phases[][2] = {
    {"expert_ms", "expert"},       {"dense_ms", "dense"},
    {"alltoall_ms", "alltoall"},   {"allreduce_ms", "allreduce"},
    {"idle_ms", "idle"},
};

static void ranks_part(text_buf *b, json_t *ranks)
{
    size_t n = json_array_size(ranks);
    if (!n)
        return;
    head(b, "moectl_rank_phase_seconds", "gauge",
         "The last step's time on a rank by phase.");
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < sizeof phases / sizeof phases[0]; k++) {
            double ms = real_of(json_array_get(ranks, i), phases[k][0]);
            if (isnan(ms))
                continue;
            put(b, "moectl_rank_phase_seconds{rank=\"%zu\",phase=\"%s\"}", i,
                phases[k][1]);
            value(b, ms / 1e3);
        }
    static const char *const per_rank[][4] = {
        {"tokens", "moectl_rank_tokens", "1", "Token rows a rank's experts "
                                              "ran in the last step."},
        {"experts", "moectl_rank_experts", "1", "Experts a rank holds."},
        {"state_gb", "moectl_rank_state_bytes", "1e9",
         "Model state a rank holds (16 bytes a parameter)."},
        {"capacity_gb", "moectl_rank_memory_bytes", "1e9",
         "A rank's memory_gb."},
        {"rss_gb", "moectl_rank_rss_bytes", "1e9", "A rank's resident set."},
        {"peak_rss_gb", "moectl_rank_peak_rss_bytes", "1e9",
         "A rank's peak resident set."},
    };
    for (size_t k = 0; k < sizeof per_rank / sizeof per_rank[0]; k++) {
        head(b, per_rank[k][1], "gauge", per_rank[k][3]);
        for (size_t i = 0; i < n; i++) {
            double x = real_of(json_array_get(ranks, i), per_rank[k][0]);
            if (isnan(x))
                continue;
            put(b, "%s{rank=\"%zu\"}", per_rank[k][1], i);
            value(b, x * atof(per_rank[k][2]));
        }
    }
}

static void layers_part(text_buf *b, json_t *imbalance)
{
    static const char *const per_layer[][3] = {
        {"max_mean", "moectl_layer_load_max_mean_ratio",
         "A layer's largest expert load over the mean (the hottest "
         "expert)."},
        {"cv", "moectl_layer_load_cv",
         "A layer's coefficient of variation of expert load."},
        {"dead", "moectl_layer_dead_experts",
         "Experts of a layer that got no tokens in the last step."},
    };
    for (size_t k = 0; k < sizeof per_layer / sizeof per_layer[0]; k++) {
        json_t *values = json_object_get(imbalance, per_layer[k][0]);
        if (!json_array_size(values))
            continue;
        head(b, per_layer[k][1], "gauge", per_layer[k][2]);
        for (size_t l = 0; l < json_array_size(values); l++) {
            json_t *v = json_array_get(values, l);
            put(b, "%s{layer=\"%zu\"}", per_layer[k][1], l);
            value(b, json_is_number(v) ? json_number_value(v) : NAN);
        }
    }
}

static void step_part(text_buf *b, prometheus *p)
{
    json_t *s = p->step;
    if (!s)
        return;
    gauge_field(b, s, "step", "moectl_step", 1, "The latest step trained.");
    counter(b, "moectl_steps_total", (double)p->steps_total,
            "Steps this job trained (since it started or resumed).");
    counter(b, "moectl_tokens_total", real_of(s, "tokens_seen"),
            "Tokens trained over the whole run.");
    gauge_field(b, s, "loss", "moectl_loss", 1, "Training loss (nats/byte).");
    gauge_field(b, s, "lr", "moectl_learning_rate", 1, "Learning rate.");
    gauge_field(b, s, "grad_norm", "moectl_grad_norm", 1,
                "Gradient norm before clipping.");
    gauge_field(b, s, "tokens_per_s", "moectl_tokens_per_second", 1,
                "Tokens per second of the last step.");
    gauge_field(b, s, "step_ms", "moectl_step_seconds", 1e-3,
                "The last step's time.");
    gauge_field(b, s, "model_flops_per_s", "moectl_model_flops_per_second",
                1, "Model FLOP/s of the last step.");
    gauge_field(b, s, "mfu", "moectl_mfu_ratio", 1,
                "Model FLOP/s over the devices' summed peak (0..1).");
    gauge_field(b, s, "ideal_share", "moectl_ideal_ratio", 1,
                "Tokens/s over the ideal of the devices' own speeds.");
    gauge_field(b, s, "cost_per_hour", "moectl_cost_per_hour", 1,
                "The devices' price per hour.");
    gauge_field(b, s, "cost_per_mtok", "moectl_cost_per_million_tokens", 1,
                "Cost of 1M tokens at the last step's speed.");
    gauge_field(b, s, "dropped", "moectl_dropped_assignments", 1,
                "Token-expert assignments dropped at capacity last step.");
    counter(b, "moectl_spike_skipped_steps_total", real_of(s, "spikes"),
            "Steps the loss-spike guard did not apply, over the whole run.");
    json_t *straggler = json_object_get(s, "straggler");
    gauge(b, "moectl_straggler_rank",
          json_is_integer(straggler) ? json_number_value(straggler) : -1,
          "The rank the others waited for in the last step (-1: none).");
    gauge(b, "moectl_paused", p->paused, "1 while the job is paused.");
    gauge_field(b, s, "placement_version", "moectl_placement_version", 1,
                "Changes of the expert placement so far.");
    ranks_part(b, json_object_get(s, "ranks"));
    layers_part(b, json_object_get(s, "imbalance"));
}

static char *build(prometheus *p)
{
    text_buf b = {0};
    run_part(&b, p->run);
    step_part(&b, p);
    if (!isnan(p->val_loss)) {
        gauge(&b, "moectl_val_loss", p->val_loss,
              "The latest validation loss (nats/byte).");
        gauge(&b, "moectl_val_step", (double)p->val_step,
              "The step it was measured at.");
    }
    counter(&b, "moectl_checkpoints_total", (double)p->checkpoints_total,
            "Checkpoints this job wrote.");
    head(&b, "moectl_commands_total", "counter",
         "Commands applied at step boundaries, by result.");
    put(&b, "moectl_commands_total{result=\"ok\"}");
    value(&b, (double)p->commands_ok);
    put(&b, "moectl_commands_total{result=\"refused\"}");
    value(&b, (double)p->commands_refused);
    counter(&b, "moectl_plans_applied_total", (double)p->plans_applied,
            "Placement plans carried out.");
    gauge(&b, "moectl_finished", p->done,
          "0 while training, 1 done, 2 stopped.");
    put(&b, "# EOF\n");
    if (b.failed) {
        free(b.data);
        return NULL;
    }
    return b.data;
}

/* ---- serving ------------------------------------------------------------ */

/* Rebuilds the text (and rewrites the textfile); `urgent` (any record but
 * a step's) always, a step's at most every BUILD_EVERY_MS (the file every
 * WRITE_EVERY_MS): small models train hundreds of steps a second. */
static void publish(prometheus *p, int urgent)
{
    double now = clock_monotonic_s();
    if (!urgent && now - p->built_at < BUILD_EVERY_MS / 1e3)
        return;
    char *text = build(p);
    if (!text)
        return;
    p->built_at = now;
    if (p->textfile[0] &&
        (urgent || now - p->written_at >= WRITE_EVERY_MS / 1e3)) {
        p->written_at = now;
        char temp[sizeof p->textfile + 8];
        snprintf(temp, sizeof temp, "%s.tmp", p->textfile);
        FILE *f = fopen(temp, "w");
        if (f) {
            int ok = fputs(text, f) >= 0;
            ok = fclose(f) == 0 && ok;
            if (!ok || rename(temp, p->textfile) != 0)
                unlink(temp);
        }
    }
    pthread_mutex_lock(&p->lock);
    free(p->text);
    p->text = text;
    pthread_mutex_unlock(&p->lock);
}

char *prometheus_text(prometheus *p)
{
    pthread_mutex_lock(&p->lock);
    char *copy = strdup(p->text ? p->text : "# EOF\n");
    pthread_mutex_unlock(&p->lock);
    return copy;
}

void prometheus_observe(prometheus *p, json_t *record)
{
    if (!p || !record)
        return;
    const char *type = json_string_value(json_object_get(record, "type"));
    if (!type)
        return;
    json_t *state = json_object_get(record, "state");
    if (json_is_object(state))
        p->paused = json_is_true(json_object_get(state, "paused"));
    if (strcmp(type, "run") == 0) {
        json_decref(p->run);
        p->run = json_incref(record);
    } else if (strcmp(type, "step") == 0) {
        json_decref(p->step);
        p->step = json_incref(record);
        p->steps_total++;
    } else if (strcmp(type, "val") == 0) {
        p->val_loss = real_of(record, "val_loss");
        p->val_step = (long long)real_of(record, "step");
    } else if (strcmp(type, "checkpoint") == 0) {
        p->checkpoints_total++;
    } else if (strcmp(type, "event") == 0) {
        if (json_is_true(json_object_get(record, "ok")))
            p->commands_ok++;
        else
            p->commands_refused++;
    } else if (strcmp(type, "plan") == 0) {
        p->plans_applied += json_is_true(json_object_get(record, "applied"));
    } else if (strcmp(type, "summary") == 0) {
        const char *s = json_string_value(json_object_get(record, "status"));
        p->done = s && strcmp(s, "stopped") == 0 ? 2 : 1;
    } else {
        return;
    }
    publish(p, strcmp(type, "step") != 0);
}

#if HAVE_MHD
static enum MHD_Result answer(void *cls, struct MHD_Connection *connection,
                              const char *url, const char *method,
                              const char *version, const char *upload_data,
                              size_t *upload_data_size, void **state)
{
    (void)version, (void)upload_data, (void)upload_data_size, (void)state;
    prometheus *p = cls;
    int found = strcmp(url, "/metrics") == 0 || strcmp(url, "/") == 0;
    int get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    char *text = found && get ? prometheus_text(p) : NULL;
    const char *body = text ? text
                       : !get ? "only GET /metrics\n"
                              : "not found: the metrics are at /metrics\n";
    struct MHD_Response *r = MHD_create_response_from_buffer(
        strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    free(text);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type",
                            found && get
                                ? "text/plain; version=0.0.4; charset=utf-8"
                                : "text/plain; charset=utf-8");
    unsigned code = found && get ? MHD_HTTP_OK
                    : !get      ? MHD_HTTP_METHOD_NOT_ALLOWED
                                : MHD_HTTP_NOT_FOUND;
    enum MHD_Result rc = MHD_queue_response(connection, code, r);
    MHD_destroy_response(r);
    return rc;
}

static int start_http(prometheus *p, const char *listen, moe_error *err)
{
    char host[64] = "127.0.0.1";
    const char *colon = strrchr(listen, ':');
    const char *port_text = colon ? colon + 1 : listen;
    if (colon && (size_t)(colon - listen) >= sizeof host)
        return error_set(err, "--prometheus %s: the address is too long",
                         listen);
    if (colon && colon > listen)
        snprintf(host, sizeof host, "%.*s", (int)(colon - listen), listen);
    char *end;
    long port = strtol(port_text, &end, 10);
    struct sockaddr_in addr = {.sin_family = AF_INET};
    if (end == port_text || *end || port < 0 || port > 65535)
        return error_set(err, "--prometheus %s: expected PORT or ADDR:PORT "
                              "(like 127.0.0.1:9464)", listen);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
        return error_set(err, "--prometheus %s: %s is not an IPv4 address",
                         listen, host);
    addr.sin_port = htons((uint16_t)port);
    p->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD,
                                 (uint16_t)port, NULL, NULL, answer, p,
                                 MHD_OPTION_SOCK_ADDR, &addr,
                                 MHD_OPTION_CONNECTION_TIMEOUT, 10u,
                                 MHD_OPTION_END);
    if (!p->daemon)
        return error_set(err, "--prometheus %s: cannot listen there (the "
                              "port in use, or not this machine's address)",
                         listen);
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(p->daemon, MHD_DAEMON_INFO_BIND_PORT);
    snprintf(p->url, sizeof p->url, "http://%s:%u/metrics", host,
             info ? (unsigned)info->port : (unsigned)port);
    return 0;
}
#else
static int start_http(prometheus *p, const char *listen, moe_error *err)
{
    (void)p;
    return error_set(err, "--prometheus %s: this moectl was built without "
                          "libmicrohttpd (install libmicrohttpd-dev, or run "
                          "scripts/setup.sh, and rebuild); "
                          "--prometheus-textfile works without it", listen);
}
#endif

int prometheus_open(prometheus **out, const char *listen,
                    const char *textfile, moe_error *err)
{
    prometheus *p = calloc(1, sizeof *p);
    if (!p)
        return error_set(err, "out of memory");
    pthread_mutex_init(&p->lock, NULL);
    p->val_loss = NAN;
    if (textfile)
        snprintf(p->textfile, sizeof p->textfile, "%s", textfile);
    if (listen && start_http(p, listen, err) < 0) {
        prometheus_close(p);
        return -1;
    }
    publish(p, 1);
    *out = p;
    return 0;
}

void prometheus_close(prometheus *p)
{
    if (!p)
        return;
#if HAVE_MHD
    if (p->daemon)
        MHD_stop_daemon(p->daemon);
#endif
    json_decref(p->run);
    json_decref(p->step);
    free(p->text);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

const char *prometheus_url(const prometheus *p)
{
    return p ? p->url : "";
}
