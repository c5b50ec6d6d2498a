/* The job's metrics for Prometheus: rank 0 folds every record it writes
 * into the text exposition format (version 0.0.4, which OpenMetrics
 * scrapers read too) and serves it over HTTP (libmicrohttpd, on its own
 * thread) at /metrics, and/or writes it to a file for node_exporter's
 * textfile collector (written whole, then renamed).
 *
 * Names start with moectl_, values are in base units (seconds, bytes,
 * ratios 0..1), counters end in _total. Cardinality is bounded: labels are
 * rank (the devices) and layer (the model's layers) and phase (five); an
 * expert is never a label: per layer, its load's max/mean, CV and dead
 * experts summarise the experts. */
#ifndef MOECTL_ENGINE_PROMETHEUS_H
#define MOECTL_ENGINE_PROMETHEUS_H

#include <stddef.h>

#include "engine/core/error.h"

struct json_t;
typedef struct prometheus prometheus;

/* listen: "PORT" or "ADDR:PORT" (an IPv4 address; the default address is
 * 127.0.0.1, loopback only; port 0 picks a free one), or NULL for no HTTP
 * endpoint. textfile: a path, or NULL. Returns 0, or -1 with the reason
 * (this build has no libmicrohttpd, a bad address, the port taken). */
int prometheus_open(prometheus **out, const char *listen,
                    const char *textfile, moe_error *err);
void prometheus_close(prometheus *p);

/* The endpoint's URL ("http://127.0.0.1:9464/metrics"), or "" without
 * one. */
const char *prometheus_url(const prometheus *p);

/* Folds one record (run, step, val, checkpoint, event, summary) into the
 * exposition; after a step record the text is rebuilt (and the textfile
 * rewritten). */
void prometheus_observe(prometheus *p, struct json_t *record);

/* The current exposition, NUL-terminated, into a malloc'd string (the
 * tests read it without HTTP). */
char *prometheus_text(prometheus *p);

#endif
