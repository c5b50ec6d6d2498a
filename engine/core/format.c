#include "engine/core/format.h"

#include <math.h>
#include <stdio.h>

void format_bytes(char *out, size_t size, double bytes)
{
    static const char *const units[] = {"B", "KB", "MB", "GB", "TB"};
    if (!isfinite(bytes) || bytes < 0) {
        snprintf(out, size, "n/a");
        return;
    }
    int u = 0;
    while (bytes >= 1000 && u < 4) {
        bytes /= 1000;
        u++;
    }
    snprintf(out, size, "%.3g %s", bytes, units[u]);
}
