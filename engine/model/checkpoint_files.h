/* The files of a checkpoint: a stream that hashes what it writes or reads
 * (FNV-1a), writing a file whole or not at all (temporary name, fsync,
 * rename), and the checkpoint directories of DIR, for checkpoint.c and
 * checkpoint_read.c only. */
#ifndef MOECTL_ENGINE_CHECKPOINT_FILES_H
#define MOECTL_ENGINE_CHECKPOINT_FILES_H

#include <stdint.h>
#include <stdio.h>

#include "engine/core/error.h"

#define CHECKPOINT_FORMAT "moectl-checkpoint"
#define CHECKPOINT_FORMAT_VERSION 3
#define CHECKPOINT_MANIFEST "manifest.json"
#define CHECKPOINT_DENSE_MAGIC "MOECTLDN"
#define CHECKPOINT_EXPERTS_MAGIC "MOECTLEX"
#define CHECKPOINT_LEGACY_MAGIC "MOECTLCK"
#define CHECKPOINT_FNV_BASIS 0xcbf29ce484222325ull

/* The manifest's names of the model's dims (V C L H T E K F S). */
extern const char *const checkpoint_dim_keys[9];

typedef struct checkpoint_stream {
    FILE *f;
    uint64_t hash;  /* FNV-1a over every byte written or read */
    uint64_t bytes; /* written or read */
    int failed;
} checkpoint_stream;

void checkpoint_put(checkpoint_stream *s, const void *data, size_t n);
/* Reads n bytes (zeros past the end, and failed set). */
void checkpoint_get(checkpoint_stream *s, void *data, size_t n);

/* The file `path` is written through s: open creates path.tmp; close
 * flushes, fsyncs and renames it into place (or removes it on failure). */
int checkpoint_write_open(checkpoint_stream *s, const char *path,
                          moe_error *err);
int checkpoint_write_close(checkpoint_stream *s, const char *path,
                           moe_error *err);

/* mkdir -p */
int checkpoint_make_dirs(const char *dir, moe_error *err);
/* What a write cut short left in dir (a kill, a full disk): temporary
 * files, and step directories without a manifest. Called at a run's start,
 * before it writes any checkpoint. */
void checkpoint_clean_unfinished(const char *dir);
void checkpoint_sync_dir(const char *dir);

/* Step of a checkpoint named in DIR ("step-NNNNNNNN" with a manifest, or
 * an earlier moectl's "step-NNNNNNNN.ckpt"), or -1. */
long checkpoint_step_of(const char *dir, const char *name);
/* Path of the newest whole checkpoint in dir; -1 when there is none. */
int checkpoint_newest(const char *dir, char *out, size_t size);
/* Removes the files of step_dir that are neither its manifest nor named
 * with `tag` (an earlier write of the same step). */
void checkpoint_remove_others(const char *step_dir, const char *tag);
/* Keeps the newest `keep` whole checkpoints of dir, and removes
 * directories left unfinished by a write older than the newest. */
void checkpoint_prune(const char *dir, int keep);

#endif
