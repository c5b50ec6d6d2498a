/* Error records: library code fills one and returns a status; only main
 * decides to quit. */
#ifndef MOECTL_ENGINE_ERROR_H
#define MOECTL_ENGINE_ERROR_H

#include <stdarg.h>

typedef struct moe_error {
    char message[1024];
} moe_error;

/* Formats the message into err (when not NULL) and returns -1, so that
 * `return error_set(err, ...)` reads as a failure. */
int error_set(moe_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Like error_set, with strerror(errno) appended. */
int error_set_errno(moe_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Checks a foreign call that returns 0 (or >= 0) on success: on failure the
 * error names the failing statement, the function, the file and the line,
 * and the enclosing function returns -1. */
#define CHECK_CALL(err, call)                                                \
    do {                                                                     \
        if ((call) < 0)                                                      \
            return error_set_errno((err), "%s failed in %s (%s:%d)", #call,  \
                                   __func__, __FILE__, __LINE__);            \
    } while (0)

#endif
