/* The one schema of the engine's records (JSON Lines: the metrics file and
 * the control socket's stream). Every record type and every field, with its
 * JSON name, kind, presence and unit, is declared once here; the engine
 * writes records through record_set_* and every reader (the console's view,
 * `moectl ctl`, `moectl bench`, tests) reads them through record_decode and
 * the typed getters, keyed by the same declaration.
 *
 * Every top-level record carries the common fields:
 *   type    its record type (below)
 *   schema  RECORD_SCHEMA_VERSION, an integer
 *   time    wall clock when it was written: Unix seconds, a real rounded
 *           to the millisecond (CLOCK_REALTIME, not the monotonic clock)
 *   run_id  the same in every record of one engine process:
 *           "<config name>-<UTC start time YYYYmmddTHHMMSSZ>-<pid>". A
 *           resumed run gets a new one (the checkpoint does not keep it);
 *           run.resumed_from says where it continued.
 * Parts (device, model, ...) are objects nested in a record: they have
 * fields of their own and no common fields. */
#ifndef MOECTL_ENGINE_RECORD_H
#define MOECTL_ENGINE_RECORD_H

#include <stddef.h>

#include "engine/config/config.h"

struct json_t;

enum { RECORD_SCHEMA_VERSION = 2, RECORD_RUN_ID_MAX = 96 };

/* X(TYPE, json name, top): top 1 for a record, 0 for a nested part. */
#define RECORD_TYPES(X)                                                        \
    X(RUN, "run", 1)                 /* once, at the start */                  \
    X(STEP, "step", 1)               /* after every step */                    \
    X(VAL, "val", 1)                 /* after a validation */                  \
    X(CHECKPOINT, "checkpoint", 1)   /* a checkpoint written */                \
    X(EVENT, "event", 1)             /* a command applied at a boundary */     \
    X(PLAN, "plan", 1)               /* the planner's proposal */              \
    X(PLAN_RESULT, "plan_result", 1) /* an applied plan, measured */           \
    X(SPIKE, "spike", 1)             /* the loss-spike guard acted */          \
    X(SUMMARY, "summary", 1)         /* once, at the end */                    \
    X(REPLY, "reply", 1)   /* control socket only: answer to one client */     \
    X(DEVICE, "device", 0) /* run.devices[] */                                 \
    X(MODEL, "model", 0)   /* run.model */                                     \
    X(BALANCE, "balance", 0) /* run.balance: as configured */                  \
    X(RANK, "rank", 0)     /* step.ranks[] */                                  \
    X(IMBALANCE, "imbalance", 0) /* step.imbalance: per layer */               \
    X(STATE, "state", 0)   /* the job's steerable state */                     \
    X(PHASES, "phases", 0) /* summary.phases_s */

typedef enum record_type {
#define RECORD_TYPE_ENUM(type, name, top) RECORD_TYPE_##type,
    RECORD_TYPES(RECORD_TYPE_ENUM)
#undef RECORD_TYPE_ENUM
    RECORD_TYPE_COUNT
} record_type;

typedef enum record_kind {
    RECORD_INT,
    RECORD_REAL,   /* any JSON number */
    RECORD_STRING,
    RECORD_BOOL,
    RECORD_ARRAY,  /* of the part named in the field, or of plain values */
    RECORD_OBJECT, /* the part named in the field */
} record_kind;

typedef enum record_presence {
    RECORD_ALWAYS,   /* present, never null */
    RECORD_NULLABLE, /* present; null when not measured (JSON has no NaN) */
    RECORD_OPTIONAL, /* may be absent; never null when present */
} record_presence;

/* X(OWNER, name, kind, presence, unit, part): a field `name` of the record
 * type or part OWNER; part is the type of nested objects (OBJECT, or the
 * items of an ARRAY), or NONE. Units: "" for counts, names and flags. */
#define RECORD_FIELDS(X)                                                       \
    X(COMMON, type, STRING, ALWAYS, "", NONE)                                  \
    X(COMMON, schema, INT, ALWAYS, "", NONE)                                   \
    X(COMMON, time, REAL, ALWAYS, "s since 1970 (UTC)", NONE)                  \
    X(COMMON, run_id, STRING, ALWAYS, "", NONE)                                \
    /* run */                                                                  \
    X(RUN, config, STRING, ALWAYS, "", NONE)                                   \
    X(RUN, source, STRING, ALWAYS, "path", NONE)                               \
    X(RUN, devices, ARRAY, ALWAYS, "", DEVICE)                                 \
    X(RUN, params, INT, ALWAYS, "parameters", NONE)                            \
    X(RUN, active_params, INT, ALWAYS, "parameters", NONE)                     \
    X(RUN, expert_state_bytes, INT, ALWAYS, "bytes", NONE)                     \
    X(RUN, dense_state_bytes, INT, ALWAYS, "bytes", NONE)                      \
    X(RUN, flops_per_token, REAL, ALWAYS, "FLOP/token", NONE)                  \
    X(RUN, tokens_per_step, INT, ALWAYS, "tokens", NONE)                       \
    X(RUN, steps, INT, ALWAYS, "steps", NONE)                                  \
    X(RUN, model, OBJECT, ALWAYS, "", MODEL)                                   \
    X(RUN, resumed_from, INT, ALWAYS, "step", NONE)                            \
    X(RUN, run_dir, STRING, NULLABLE, "path", NONE)                            \
    X(RUN, currency, STRING, ALWAYS, "", NONE)                                 \
    X(RUN, balance, OBJECT, ALWAYS, "", BALANCE)                               \
    X(DEVICE, name, STRING, ALWAYS, "", NONE)                                  \
    X(DEVICE, backend, STRING, ALWAYS, "config_backend_names", NONE)           \
    X(DEVICE, index, INT, ALWAYS, "", NONE)                                    \
    X(DEVICE, threads, INT, ALWAYS, "", NONE)                                  \
    X(DEVICE, precision, STRING, ALWAYS, "config_precision_names", NONE)       \
    X(DEVICE, gemm, STRING, ALWAYS, "", NONE)                                  \
    X(DEVICE, price_per_hour, REAL, ALWAYS, "currency/h", NONE)                \
    X(DEVICE, peak_tflops, REAL, ALWAYS, "TFLOP/s", NONE)                      \
    X(DEVICE, emulated, BOOL, ALWAYS, "", NONE)                                \
    X(MODEL, vocab, INT, ALWAYS, "", NONE)                                     \
    X(MODEL, d_model, INT, ALWAYS, "", NONE)                                   \
    X(MODEL, layers, INT, ALWAYS, "", NONE)                                    \
    X(MODEL, heads, INT, ALWAYS, "", NONE)                                     \
    X(MODEL, seq_len, INT, ALWAYS, "tokens", NONE)                             \
    X(MODEL, experts, INT, ALWAYS, "", NONE)                                   \
    X(MODEL, top_k, INT, ALWAYS, "", NONE)                                     \
    X(MODEL, expert_hidden, INT, ALWAYS, "", NONE)                             \
    X(MODEL, shared_hidden, INT, ALWAYS, "", NONE)                             \
    X(BALANCE, policy, STRING, ALWAYS, "config_policy_names", NONE)            \
    X(BALANCE, every, INT, ALWAYS, "steps", NONE)                              \
    X(BALANCE, min_gain, REAL, ALWAYS, "fraction", NONE)                       \
    X(BALANCE, bias_update_rate, REAL, ALWAYS, "", NONE)                       \
    X(BALANCE, routing_warmup_steps, INT, ALWAYS, "steps", NONE)               \
    /* step */                                                                 \
    X(STEP, step, INT, ALWAYS, "step", NONE)                                   \
    X(STEP, loss, REAL, NULLABLE, "nats/byte", NONE)                           \
    X(STEP, lr, REAL, NULLABLE, "", NONE)                                      \
    X(STEP, grad_norm, REAL, NULLABLE, "", NONE)                               \
    X(STEP, tokens_per_s, REAL, NULLABLE, "tokens/s", NONE)                    \
    X(STEP, model_flops_per_s, REAL, NULLABLE, "FLOP/s", NONE)                 \
    X(STEP, aux_loss, REAL, NULLABLE, "", NONE)                                \
    X(STEP, z_loss, REAL, NULLABLE, "", NONE)                                  \
    X(STEP, step_ms, REAL, NULLABLE, "ms", NONE)                               \
    X(STEP, tokens, INT, ALWAYS, "tokens", NONE)                               \
    X(STEP, tokens_seen, INT, ALWAYS, "tokens", NONE)                          \
    X(STEP, elapsed_s, REAL, NULLABLE, "s", NONE)                              \
    X(STEP, dropped, INT, ALWAYS, "assignments", NONE)                         \
    X(STEP, expert_load, ARRAY, ALWAYS, "tokens (layers, experts)", NONE)      \
    X(STEP, ranks, ARRAY, ALWAYS, "", RANK)                                    \
    X(STEP, placement, ARRAY, ALWAYS, "rank (layers, experts)", NONE)          \
    X(STEP, placement_version, INT, ALWAYS, "", NONE)                          \
    X(STEP, imbalance, OBJECT, ALWAYS, "", IMBALANCE)                          \
    X(STEP, load_ema, ARRAY, OPTIONAL, "tokens (layers, experts)", NONE)       \
    X(STEP, router_bias, ARRAY, OPTIONAL, "(layers, experts)", NONE)           \
    X(STEP, routing_mix, REAL, NULLABLE, "fraction", NONE)                     \
    X(STEP, straggler, INT, NULLABLE, "rank", NONE)                            \
    X(STEP, ideal_tokens_per_s, REAL, NULLABLE, "tokens/s", NONE)              \
    X(STEP, ideal_share, REAL, NULLABLE, "fraction", NONE)                     \
    X(STEP, mfu, REAL, NULLABLE, "fraction", NONE)                             \
    X(STEP, cost_per_hour, REAL, NULLABLE, "currency/h", NONE)                 \
    X(STEP, cost_per_mtok, REAL, NULLABLE, "currency/1e6 tokens", NONE)        \
    X(STEP, cost_per_btok, REAL, NULLABLE, "currency/1e9 tokens", NONE)        \
    X(STEP, cost_per_ttok, REAL, NULLABLE, "currency/1e12 tokens", NONE)       \
    X(STEP, splits, ARRAY, OPTIONAL,                                           \
      "[[layer, expert, [[rank, fraction], ...]], ...]", NONE)                 \
    X(STEP, state, OBJECT, ALWAYS, "", STATE)                                  \
    X(STEP, skipped, BOOL, ALWAYS, "the spike guard did not apply it", NONE)   \
    X(STEP, spikes, INT, ALWAYS, "steps skipped so far", NONE)                 \
    X(RANK, rank, INT, ALWAYS, "", NONE)                                       \
    X(RANK, device, STRING, ALWAYS, "", NONE)                                  \
    X(RANK, backend, STRING, ALWAYS, "config_backend_names", NONE)             \
    X(RANK, emulated, BOOL, ALWAYS, "", NONE)                                  \
    X(RANK, expert_ms, REAL, NULLABLE, "ms", NONE)                             \
    X(RANK, dense_ms, REAL, NULLABLE, "ms", NONE)                              \
    X(RANK, alltoall_ms, REAL, NULLABLE, "ms", NONE)                           \
    X(RANK, allreduce_ms, REAL, NULLABLE, "ms", NONE)                          \
    X(RANK, idle_ms, REAL, NULLABLE, "ms", NONE)                               \
    X(RANK, tokens, INT, ALWAYS, "tokens", NONE)                               \
    X(RANK, rows, INT, ALWAYS, "sequences", NONE)                              \
    X(RANK, experts, INT, ALWAYS, "", NONE)                                    \
    X(RANK, migration_bytes, INT, ALWAYS, "bytes", NONE)                       \
    X(RANK, expert_flops_per_s, REAL, NULLABLE, "FLOP/s", NONE)                \
    X(RANK, state_gb, REAL, NULLABLE, "1e9 bytes", NONE)                       \
    X(RANK, capacity_gb, REAL, NULLABLE, "1e9 bytes", NONE)                    \
    X(RANK, rss_gb, REAL, NULLABLE, "1e9 bytes", NONE)                         \
    X(RANK, peak_rss_gb, REAL, NULLABLE, "1e9 bytes", NONE)                    \
    X(RANK, expert_state_gb, REAL, NULLABLE, "1e9 bytes", NONE)                \
    X(RANK, dense_state_gb, REAL, NULLABLE, "1e9 bytes", NONE)                 \
    X(RANK, activations_gb, REAL, NULLABLE, "1e9 bytes", NONE)                 \
    X(RANK, staging_gb, REAL, NULLABLE, "1e9 bytes", NONE)                     \
    X(IMBALANCE, max_mean, ARRAY, ALWAYS, "ratio per layer (null n/a)", NONE)  \
    X(IMBALANCE, cv, ARRAY, ALWAYS, "ratio per layer (null n/a)", NONE)        \
    X(IMBALANCE, dead, ARRAY, ALWAYS, "experts per layer", NONE)               \
    /* the job's state after a step or a command */                            \
    X(STATE, step, INT, ALWAYS, "step completed", NONE)                        \
    X(STATE, last_step, INT, ALWAYS, "step", NONE)                             \
    X(STATE, paused, BOOL, ALWAYS, "", NONE)                                   \
    X(STATE, lr, REAL, NULLABLE, "of the next step", NONE)                     \
    X(STATE, ranks, INT, ALWAYS, "", NONE)                                     \
    X(STATE, placement_version, INT, ALWAYS, "", NONE)                         \
    X(STATE, policy, STRING, ALWAYS, "config_policy_names", NONE)              \
    X(STATE, every, INT, ALWAYS, "steps", NONE)                                \
    X(STATE, min_gain, REAL, ALWAYS, "fraction", NONE)                         \
    /* val, checkpoint */                                                      \
    X(VAL, step, INT, ALWAYS, "step", NONE)                                    \
    X(VAL, val_loss, REAL, NULLABLE, "nats/byte", NONE)                        \
    X(CHECKPOINT, step, INT, ALWAYS, "step", NONE)                             \
    X(CHECKPOINT, path, STRING, ALWAYS, "path", NONE)                          \
    /* event: a command applied at the boundary after `step` */                \
    X(EVENT, step, INT, ALWAYS, "step", NONE)                                  \
    X(EVENT, command, STRING, ALWAYS, "command grammar", NONE)                 \
    X(EVENT, origin, STRING, ALWAYS, "record_origin_names", NONE)              \
    X(EVENT, ok, BOOL, ALWAYS, "applied (not refused)", NONE)                  \
    X(EVENT, reply, STRING, ALWAYS, "for display only", NONE)                  \
    X(EVENT, duration_ms, REAL, OPTIONAL, "ms", NONE)                          \
    X(EVENT, state, OBJECT, ALWAYS, "after the command", STATE)                \
    /* plan */                                                                 \
    X(PLAN, step, INT, ALWAYS, "step", NONE)                                   \
    X(PLAN, trigger, STRING, ALWAYS, "record_trigger_names", NONE)             \
    X(PLAN, applied, BOOL, ALWAYS, "", NONE)                                   \
    X(PLAN, moves, ARRAY, ALWAYS, "[[layer, expert, from, to], ...]", NONE)    \
    X(PLAN, splits, ARRAY, ALWAYS,                                             \
      "[[layer, expert, [[rank, fraction], ...]], ...]", NONE)                 \
    X(PLAN, rows, ARRAY, ALWAYS, "[sequences per rank, ...] proposed", NONE)   \
    X(PLAN, changes, INT, ALWAYS, "experts, and 1 for a new split of the "   \
      "batch", NONE)                                                           \
    X(PLAN, predicted_before_ms, REAL, ALWAYS, "ms", NONE)                     \
    X(PLAN, predicted_after_ms, REAL, ALWAYS, "ms", NONE)                      \
    X(PLAN, predicted_gain, REAL, ALWAYS, "fraction", NONE)                    \
    X(PLAN, moved_bytes, REAL, ALWAYS, "bytes", NONE)                          \
    X(PLAN_RESULT, step, INT, ALWAYS, "step", NONE)                            \
    X(PLAN_RESULT, applied_step, INT, ALWAYS, "step", NONE)                    \
    X(PLAN_RESULT, steps, INT, ALWAYS, "steps", NONE)                          \
    X(PLAN_RESULT, before_ms, REAL, ALWAYS, "ms", NONE)                        \
    X(PLAN_RESULT, predicted_ms, REAL, ALWAYS, "ms", NONE)                     \
    X(PLAN_RESULT, measured_ms, REAL, ALWAYS, "ms", NONE)                      \
    X(PLAN_RESULT, noise_ms, REAL, NULLABLE, "ms", NONE)                       \
    X(PLAN_RESULT, verdict, STRING, ALWAYS, "delivered|missed|noise", NONE)    \
    X(PLAN_RESULT, delivered, BOOL, ALWAYS, "", NONE)                          \
    /* spike: what the loss-spike guard did after `step` */                    \
    X(SPIKE, step, INT, ALWAYS, "step", NONE)                                  \
    X(SPIKE, action, STRING, ALWAYS, "record_spike_action_names", NONE)        \
    X(SPIKE, reason, STRING, ALWAYS, "for display only", NONE)                 \
    X(SPIKE, loss, REAL, NULLABLE, "nats/byte", NONE)                          \
    X(SPIKE, grad_norm, REAL, NULLABLE, "", NONE)                              \
    X(SPIKE, median_loss, REAL, NULLABLE, "nats/byte", NONE)                   \
    X(SPIKE, median_grad_norm, REAL, NULLABLE, "", NONE)                       \
    X(SPIKE, spikes, INT, ALWAYS, "steps skipped so far", NONE)                \
    X(SPIKE, requeued_to, INT, NULLABLE, "step (skip)", NONE)                  \
    X(SPIKE, lr_factor, REAL, NULLABLE, "(lower_lr)", NONE)                    \
    X(SPIKE, until_step, INT, NULLABLE, "step (lower_lr)", NONE)               \
    X(SPIKE, checkpoint, STRING, NULLABLE, "path (rollback)", NONE)            \
    X(SPIKE, resumed_step, INT, NULLABLE, "step (rollback)", NONE)             \
    /* summary */                                                              \
    X(SUMMARY, status, STRING, ALWAYS, "record_status_names", NONE)            \
    X(SUMMARY, first_step, INT, ALWAYS, "step", NONE)                          \
    X(SUMMARY, last_step, INT, ALWAYS, "step", NONE)                           \
    X(SUMMARY, loss, REAL, NULLABLE, "nats/byte", NONE)                        \
    X(SUMMARY, val_loss, REAL, NULLABLE, "nats/byte", NONE)                    \
    X(SUMMARY, val_step, INT, ALWAYS, "step", NONE)                            \
    X(SUMMARY, tokens_per_s, REAL, NULLABLE, "tokens/s", NONE)                 \
    X(SUMMARY, elapsed_s, REAL, NULLABLE, "s", NONE)                           \
    X(SUMMARY, tokens_seen, INT, ALWAYS, "tokens", NONE)                       \
    X(SUMMARY, checkpoint, STRING, NULLABLE, "path", NONE)                     \
    X(SUMMARY, cost_per_mtok, REAL, NULLABLE, "currency/1e6 tokens", NONE)     \
    X(SUMMARY, mfu, REAL, NULLABLE, "fraction", NONE)                          \
    X(SUMMARY, migrations, INT, ALWAYS, "experts", NONE)                       \
    X(SUMMARY, migration_bytes, REAL, NULLABLE, "bytes", NONE)                 \
    X(SUMMARY, spikes, INT, ALWAYS, "steps the spike guard skipped", NONE)     \
    X(SUMMARY, rollbacks, INT, ALWAYS, "the spike guard's", NONE)              \
    X(SUMMARY, phases_s, OBJECT, ALWAYS, "", PHASES)                           \
    X(PHASES, train, REAL, NULLABLE, "s", NONE)                                \
    X(PHASES, validation, REAL, NULLABLE, "s", NONE)                           \
    X(PHASES, checkpoints, REAL, NULLABLE, "s", NONE)                          \
    X(PHASES, commands, REAL, NULLABLE, "s", NONE)                             \
    /* reply: to the client that sent a command (control socket) */            \
    X(REPLY, ok, BOOL, ALWAYS, "applied (not refused)", NONE)                  \
    X(REPLY, command, STRING, OPTIONAL, "absent: the line did not parse",      \
      NONE)                                                                    \
    X(REPLY, message, STRING, OPTIONAL, "when ok; for display only", NONE)     \
    X(REPLY, error, STRING, OPTIONAL, "when not ok; for display only", NONE)   \
    X(REPLY, state, OBJECT, OPTIONAL, "after the command", STATE)

typedef enum record_field {
#define RECORD_FIELD_ENUM(owner, name, kind, presence, unit, part)             \
    RECORD_##owner##_##name,
    RECORD_FIELDS(RECORD_FIELD_ENUM)
#undef RECORD_FIELD_ENUM
    RECORD_FIELD_COUNT
} record_field;

/* RECORD_TYPE_COMMON: the owner of the common fields (not a type). */
enum { RECORD_TYPE_COMMON = RECORD_TYPE_COUNT, RECORD_TYPE_NONE = -1 };

typedef struct record_field_info {
    int owner;       /* a record_type, or RECORD_TYPE_COMMON */
    const char *name;
    record_kind kind;
    record_presence presence;
    const char *unit;
    int part;        /* a record_type, or RECORD_TYPE_NONE */
} record_field_info;

extern const record_field_info record_fields[RECORD_FIELD_COUNT];
/* Indexed by record_type, NULL-terminated. */
extern const char *const record_type_names[];
/* 1 for a record, 0 for a part. */
int record_type_is_top(record_type type);
/* Who gave a command (event.origin). */
typedef enum record_origin {
    RECORD_ORIGIN_CONTROL, /* a client of the control socket */
    RECORD_ORIGIN_SCRIPT,  /* the headless script (--at, --every, --when) */
    RECORD_ORIGIN_POLICY,  /* the balance policy's own turn */
} record_origin;
extern const char *const record_origin_names[];
/* plan.trigger: a command (plan, apply) or the policy's turn. */
typedef enum record_trigger {
    RECORD_TRIGGER_PLAN,
    RECORD_TRIGGER_APPLY,
    RECORD_TRIGGER_SUGGEST,
    RECORD_TRIGGER_AUTO,
    RECORD_TRIGGER_REVERT, /* auto moving back from its plan that slowed
                              the job */
} record_trigger;
extern const char *const record_trigger_names[];
/* spike.action */
typedef enum record_spike_action {
    RECORD_SPIKE_SKIP,     /* the step was not applied */
    RECORD_SPIKE_LOWER_LR, /* spikes repeat: the lr lowered for a while */
    RECORD_SPIKE_ROLLBACK, /* spikes persist: the newest checkpoint */
} record_spike_action;
extern const char *const record_spike_action_names[];
/* summary.status */
typedef enum record_status { RECORD_STATUS_DONE, RECORD_STATUS_STOPPED }
    record_status;
extern const char *const record_status_names[];

/* The steerable state of a job (the "state" part). */
typedef struct record_state {
    int step;              /* last step completed */
    int last_step;         /* the run stops after it */
    int paused;
    double lr;             /* of the next step */
    int ranks;
    int placement_version;
    config_policy policy;
    int every;             /* steps between the policy's plans */
    double min_gain;       /* fraction of a step */
} record_state;

/* ---- Writing ---- */

/* A new record or part {"type": name} ({} for a part); NULL when out of
 * memory. The common fields other than type come from record_stamp. */
struct json_t *record_begin(record_type type);
/* Adds schema, time (now) and run_id to a record; run_id may be "". */
void record_stamp(struct json_t *record, const char *run_id);
/* Set a field of o by its declaration (o NULL: nothing). A real that is not
 * finite is written as null; a NULL string as null. */
void record_set_int(struct json_t *o, record_field f, long long x);
void record_set_real(struct json_t *o, record_field f, double x);
void record_set_string(struct json_t *o, record_field f, const char *s);
void record_set_bool(struct json_t *o, record_field f, int x);
/* value is consumed; NULL stores null. */
void record_set_json(struct json_t *o, record_field f, struct json_t *value);
/* A new "state" part. */
struct json_t *record_state_json(const record_state *s);
/* (rows, cols) row-major grids as arrays of arrays. */
struct json_t *record_grid_int(const int *grid, int rows, int cols);
struct json_t *record_grid_real(const double *grid, int rows, int cols);
/* A string of client text with bytes that are not UTF-8 sent as '?'. */
struct json_t *record_text(const char *text);

/* ---- Reading ---- */

/* A decoded record or part: json is borrowed from the line's parse,
 * which the top-level record owns. */
typedef struct record_value {
    struct json_t *json;
    record_type type;
    int owned; /* record_free releases json */
} record_value;

/* Parses one line (no newline needed). Returns 0, or -1 with a one-line
 * reason when the line is not a JSON object or its type is not declared.
 * Free with record_free (also after a failure). */
int record_decode(const char *line, record_value *out, char *why,
                  size_t why_size);
void record_free(record_value *r);
/* The part in field f (an OBJECT field: index 0; an ARRAY of parts: the
 * index-th). Returns 0, or -1 when absent (out then reads as empty). */
int record_part(const record_value *r, record_field f, size_t index,
                record_value *out);
/* Items of an ARRAY field (0 when absent). */
size_t record_count(const record_value *r, record_field f);
/* Present and not null. */
int record_has(const record_value *r, record_field f);
long long record_int(const record_value *r, record_field f,
                     long long fallback);
/* NAN: absent or null */
double record_real(const record_value *r, record_field f);
/* NULL: absent or null */
const char *record_string(const record_value *r, record_field f);
/* 0: absent */
int record_bool(const record_value *r, record_field f);
/* The field's value (borrowed), for arrays and grids; NULL when absent. */
struct json_t *record_json(const record_value *r, record_field f);
/* The index of a string field's value in names (NULL-terminated), or -1. */
int record_enum(const record_value *r, record_field f,
                const char *const *names);
/* Fills *out from a state part; returns 0, or -1 when r has none. */
int record_state_read(const record_value *r, record_field f,
                      record_state *out);
/* Checks r (and its parts) against the schema: every declared field
 * present with its kind, none undeclared, common fields on top-level
 * records. Returns 0, or -1 with a one-line reason. */
int record_check(const record_value *r, char *why, size_t why_size);

#endif
