#include "engine/core/error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int error_set(moe_error *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int error_set_errno(moe_error *err, const char *fmt, ...)
{
    int saved = errno;
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < sizeof err->message)
            snprintf(err->message + n, sizeof err->message - (size_t)n,
                     ": %s", strerror(saved));
    }
    return -1;
}

int error_call_failed(moe_error *err, const char *statement,
                      const char *function, const char *file, int line)
{
    int saved = errno;
    if (saved)
        return error_set(err, "%s failed in %s (%s:%d): %s", statement,
                         function, file, line, strerror(saved));
    return error_set(err, "%s failed in %s (%s:%d)", statement, function,
                     file, line);
}
