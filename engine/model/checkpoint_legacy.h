/* An earlier moectl's single-file checkpoints (step-NNNNNNNN.ckpt, format
 * versions 1 and 2), still read on any rank count; for checkpoint_read.c. */
#ifndef MOECTL_ENGINE_CHECKPOINT_LEGACY_H
#define MOECTL_ENGINE_CHECKPOINT_LEGACY_H

#include <stdint.h>

#include "engine/core/error.h"
#include "engine/model/checkpoint.h"
#include "engine/model/model.h"

/* Checks the file's shape against want (names: the keys, for messages)
 * and reads its step, tokens seen, seed, data position and placement
 * (L, E); *ranks is the highest rank it names plus one. */
int checkpoint_legacy_header(const char *path, const model *m,
                             const int32_t want[9], const char *const names[9],
                             checkpoint_state *st, int *expert_rank,
                             int *ranks, moe_error *err);

/* Reads the dense state and the experts m holds, checking the checksum. */
int checkpoint_legacy_read(const char *path, model *m, moe_error *err);

#endif
