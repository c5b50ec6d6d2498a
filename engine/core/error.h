/* Error records: library code fills one and returns a status; only main
 * decides to quit. */
#ifndef MOECTL_ENGINE_ERROR_H
#define MOECTL_ENGINE_ERROR_H

#include <errno.h>
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

/* Fills err for a failed foreign call: the statement, the function, the
 * file and the line, and strerror(errno) when errno is set. Returns -1. */
int error_call_failed(moe_error *err, const char *statement,
                      const char *function, const char *file, int line);

/* Checks a foreign call (libc, MPI, a runtime) that returns 0 on success:
 * on failure err names the failing statement, the function, the file and
 * the line, and the enclosing function returns -1. */
#define CHECK_CALL(err, call)                                                \
    do {                                                                     \
        errno = 0;                                                           \
        if ((call) != 0)                                                     \
            return error_call_failed((err), #call, __func__, __FILE__,       \
                                     __LINE__);                              \
    } while (0)

#endif
