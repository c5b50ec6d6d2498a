#include "engine/protocol/record.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const record_field_info record_fields[RECORD_FIELD_COUNT] = {
#define RECORD_FIELD_INFO(owner, name, kind, presence, unit, part)             \
    {RECORD_TYPE_##owner, #name, RECORD_##kind, RECORD_##presence, unit,       \
     RECORD_TYPE_##part},
    RECORD_FIELDS(RECORD_FIELD_INFO)
#undef RECORD_FIELD_INFO
};

const char *const record_type_names[] = {
#define RECORD_TYPE_NAME(type, name, top) name,
    RECORD_TYPES(RECORD_TYPE_NAME)
#undef RECORD_TYPE_NAME
    NULL
};

static const int record_type_top[] = {
#define RECORD_TYPE_TOP(type, name, top) top,
    RECORD_TYPES(RECORD_TYPE_TOP)
#undef RECORD_TYPE_TOP
};

int record_type_is_top(record_type type)
{
    return type < RECORD_TYPE_COUNT && record_type_top[type];
}

const char *const record_origin_names[] = {"control", "script", "policy",
                                           NULL};
const char *const record_trigger_names[] = {"plan", "apply", "suggest",
                                            "auto", "revert", NULL};
const char *const record_status_names[] = {"done", "stopped", NULL};
const char *const record_spike_action_names[] = {"skip", "lower_lr",
                                                "rollback", NULL};

/* ---- Writing ---- */

json_t *record_begin(record_type type)
{
    json_t *o = json_object();
    if (o && record_type_top[type])
        json_object_set_new(o, "type", json_string(record_type_names[type]));
    return o;
}

void record_stamp(json_t *record, const char *run_id)
{
    if (!record)
        return;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    double time_s = (double)now.tv_sec + (double)(now.tv_nsec / 1000000) / 1e3;
    json_object_set_new(record, "schema", json_integer(RECORD_SCHEMA_VERSION));
    json_object_set_new(record, "time", json_real(time_s));
    json_object_set_new(record, "run_id", json_string(run_id ? run_id : ""));
}

static void record_set(json_t *o, record_field f, json_t *value)
{
    if (o)
        json_object_set_new(o, record_fields[f].name,
                            value ? value : json_null());
    else
        json_decref(value);
}

void record_set_int(json_t *o, record_field f, long long x)
{
    record_set(o, f, json_integer((json_int_t)x));
}

void record_set_real(json_t *o, record_field f, double x)
{
    record_set(o, f, isfinite(x) ? json_real(x) : json_null());
}

void record_set_string(json_t *o, record_field f, const char *s)
{
    record_set(o, f, s ? record_text(s) : json_null());
}

void record_set_bool(json_t *o, record_field f, int x)
{
    record_set(o, f, json_boolean(x));
}

void record_set_json(json_t *o, record_field f, json_t *value)
{
    record_set(o, f, value);
}

json_t *record_state_json(const record_state *s)
{
    json_t *o = record_begin(RECORD_TYPE_STATE);
    record_set_int(o, RECORD_STATE_step, s->step);
    record_set_int(o, RECORD_STATE_last_step, s->last_step);
    record_set_bool(o, RECORD_STATE_paused, s->paused);
    record_set_real(o, RECORD_STATE_lr, s->lr);
    record_set_int(o, RECORD_STATE_ranks, s->ranks);
    record_set_int(o, RECORD_STATE_placement_version, s->placement_version);
    record_set_string(o, RECORD_STATE_policy, config_policy_names[s->policy]);
    record_set_int(o, RECORD_STATE_every, s->every);
    record_set_real(o, RECORD_STATE_min_gain, s->min_gain);
    return o;
}

json_t *record_grid_int(const int *grid, int rows, int cols)
{
    json_t *out = json_array();
    for (int r = 0; grid && r < rows; r++) {
        json_t *row = json_array();
        for (int c = 0; c < cols; c++)
            json_array_append_new(row,
                                  json_integer(grid[(size_t)r * cols + c]));
        json_array_append_new(out, row);
    }
    return out;
}

json_t *record_grid_real(const double *grid, int rows, int cols)
{
    json_t *out = json_array();
    for (int r = 0; grid && r < rows; r++) {
        json_t *row = json_array();
        for (int c = 0; c < cols; c++) {
            double x = grid[(size_t)r * cols + c];
            json_array_append_new(row, isfinite(x) ? json_real(x)
                                                   : json_null());
        }
        json_array_append_new(out, row);
    }
    return out;
}

json_t *record_text(const char *text)
{
    json_t *s = json_string(text);
    if (s)
        return s;
    char *copy = strdup(text);
    if (!copy)
        return NULL;
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    s = json_string(copy);
    free(copy);
    return s;
}

/* ---- Reading ---- */

/* A reason goes to a terminal on one line: bytes of the input it quotes
 * (a type name, jansson's excerpt) that are control characters become
 * '?'. */
static int one_line(char *why)
{
    for (unsigned char *p = (unsigned char *)why; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            *p = '?';
    return -1;
}

int record_decode(const char *line, record_value *out, char *why,
                  size_t why_size)
{
    *out = (record_value){NULL, RECORD_TYPE_COUNT, 1};
    json_error_t error;
    out->json = json_loads(line, 0, &error);
    if (!json_is_object(out->json)) {
        snprintf(why, why_size, "not a JSON object%s%s",
                 out->json ? "" : ": ", out->json ? "" : error.text);
        return one_line(why);
    }
    const char *type = json_string_value(json_object_get(out->json, "type"));
    for (int t = 0; type && t < RECORD_TYPE_COUNT; t++)
        if (record_type_top[t] && strcmp(type, record_type_names[t]) == 0) {
            out->type = (record_type)t;
            return 0;
        }
    snprintf(why, why_size, "record type %s%s%s is not in the schema",
             type ? "\"" : "(none)", type ? type : "", type ? "\"" : "");
    return one_line(why);
}

void record_free(record_value *r)
{
    if (r && r->owned)
        json_decref(r->json);
    if (r)
        r->json = NULL;
}

/* The value of field f in r, or NULL when r is not f's owner. */
static json_t *field_value(const record_value *r, record_field f)
{
    int owner = record_fields[f].owner;
    if (!r->json || (owner != RECORD_TYPE_COMMON && owner != (int)r->type))
        return NULL;
    return json_object_get(r->json, record_fields[f].name);
}

int record_part(const record_value *r, record_field f, size_t index,
                record_value *out)
{
    json_t *v = field_value(r, f);
    if (json_is_array(v))
        v = json_array_get(v, index);
    else if (index != 0)
        v = NULL;
    int part = record_fields[f].part;
    *out = (record_value){json_is_object(v) ? v : NULL,
                    part >= 0 ? (record_type)part : RECORD_TYPE_COUNT, 0};
    return out->json ? 0 : -1;
}

size_t record_count(const record_value *r, record_field f)
{
    return json_array_size(field_value(r, f));
}

int record_has(const record_value *r, record_field f)
{
    json_t *v = field_value(r, f);
    return v && !json_is_null(v);
}

long long record_int(const record_value *r, record_field f,
                     long long fallback)
{
    json_t *v = field_value(r, f);
    return json_is_integer(v) ? (long long)json_integer_value(v) : fallback;
}

double record_real(const record_value *r, record_field f)
{
    json_t *v = field_value(r, f);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

const char *record_string(const record_value *r, record_field f)
{
    return json_string_value(field_value(r, f));
}

int record_bool(const record_value *r, record_field f)
{
    return json_is_true(field_value(r, f));
}

json_t *record_json(const record_value *r, record_field f)
{
    return field_value(r, f);
}

int record_enum(const record_value *r, record_field f,
                const char *const *names)
{
    const char *s = record_string(r, f);
    return s ? config_enum_lookup(names, s, strlen(s)) : -1;
}

int record_state_read(const record_value *r, record_field f,
                      record_state *out)
{
    record_value s;
    if (record_part(r, f, 0, &s) < 0)
        return -1;
    int policy = record_enum(&s, RECORD_STATE_policy, config_policy_names);
    *out = (record_state){
        .step = (int)record_int(&s, RECORD_STATE_step, 0),
        .last_step = (int)record_int(&s, RECORD_STATE_last_step, 0),
        .paused = record_bool(&s, RECORD_STATE_paused),
        .lr = record_real(&s, RECORD_STATE_lr),
        .ranks = (int)record_int(&s, RECORD_STATE_ranks, 0),
        .placement_version =
            (int)record_int(&s, RECORD_STATE_placement_version, 0),
        .policy = policy >= 0 ? (config_policy)policy : CONFIG_POLICY_OFF,
        .every = (int)record_int(&s, RECORD_STATE_every, 0),
        .min_gain = record_real(&s, RECORD_STATE_min_gain),
    };
    return policy >= 0 ? 0 : -1;
}

/* ---- Checking ---- */

static int kind_holds(record_kind kind, const json_t *v)
{
    switch (kind) {
    case RECORD_INT: return json_is_integer(v);
    case RECORD_REAL: return json_is_number(v);
    case RECORD_STRING: return json_is_string(v);
    case RECORD_BOOL: return json_is_boolean(v);
    case RECORD_ARRAY: return json_is_array(v);
    case RECORD_OBJECT: return json_is_object(v);
    }
    return 0;
}

static const char *const kind_names[] = {"an integer", "a number",
                                         "a string", "a boolean",
                                         "an array", "an object"};

static int declared(record_type type, const char *key)
{
    for (int f = 0; f < RECORD_FIELD_COUNT; f++) {
        int owner = record_fields[f].owner;
        if ((owner == (int)type ||
             (owner == RECORD_TYPE_COMMON && record_type_top[type])) &&
            strcmp(record_fields[f].name, key) == 0)
            return 1;
    }
    return 0;
}

static int check_parts(const record_value *r, record_field f, char *why,
                       size_t why_size);

/* One declared field of r. */
static int check_field(const record_value *r, record_field f, char *why,
                       size_t why_size)
{
    const record_field_info *info = &record_fields[f];
    const char *type = record_type_names[r->type];
    json_t *v = json_object_get(r->json, info->name);
    if (!v) {
        if (info->presence == RECORD_OPTIONAL)
            return 0;
        snprintf(why, why_size, "%s: field %s is missing", type, info->name);
        return -1;
    }
    if (json_is_null(v) && info->presence == RECORD_NULLABLE)
        return 0;
    if (!kind_holds(info->kind, v)) {
        snprintf(why, why_size, "%s: field %s is not %s", type, info->name,
                 kind_names[info->kind]);
        return -1;
    }
    return check_parts(r, f, why, why_size);
}

static int check_parts(const record_value *r, record_field f, char *why,
                       size_t why_size)
{
    if (record_fields[f].part == RECORD_TYPE_NONE)
        return 0;
    size_t n = record_fields[f].kind == RECORD_ARRAY ? record_count(r, f) : 1;
    for (size_t i = 0; i < n; i++) {
        record_value part;
        if (record_part(r, f, i, &part) < 0) {
            snprintf(why, why_size, "%s: %s[%zu] is not an object",
                     record_type_names[r->type], record_fields[f].name, i);
            return -1;
        }
        if (record_check(&part, why, why_size) < 0)
            return -1;
    }
    return 0;
}

int record_check(const record_value *r, char *why, size_t why_size)
{
    if (!json_is_object(r->json) || r->type >= RECORD_TYPE_COUNT) {
        snprintf(why, why_size, "not a record");
        return -1;
    }
    const char *type = record_type_names[r->type];
    for (int f = 0; f < RECORD_FIELD_COUNT; f++) {
        int owner = record_fields[f].owner;
        if (owner != (int)r->type &&
            !(owner == RECORD_TYPE_COMMON && record_type_top[r->type]))
            continue;
        if (check_field(r, (record_field)f, why, why_size) < 0)
            return -1;
    }
    if (record_type_top[r->type] &&
        record_int(r, RECORD_COMMON_schema, -1) != RECORD_SCHEMA_VERSION) {
        snprintf(why, why_size, "%s: schema is not %d", type,
                 RECORD_SCHEMA_VERSION);
        return -1;
    }
    const char *key;
    json_t *value;
    json_object_foreach(r->json, key, value) {
        if (!declared(r->type, key)) {
            snprintf(why, why_size, "%s: field %s is not in the schema",
                     type, key);
            return one_line(why); /* the key is the line's own bytes */
        }
    }
    return 0;
}
