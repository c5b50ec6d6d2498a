#include "tui/console/format.h"

#include <math.h>
#include <stdio.h>

void format_duration(char *out, size_t size, double s)
{
    if (!isfinite(s) || s < 0)
        snprintf(out, size, "n/a");
    else if (s < 3600)
        snprintf(out, size, "%d:%02d", (int)s / 60, (int)s % 60);
    else
        snprintf(out, size, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

void format_money(char *out, size_t size, double x, const char *cur)
{
    if (!isfinite(x))
        snprintf(out, size, "n/a");
    else if (x >= 1e6)
        snprintf(out, size, "%.2fM %s", x / 1e6, cur);
    else if (x >= 1e3)
        snprintf(out, size, "%.1fk %s", x / 1e3, cur);
    else if (x > 0 && x < 1e-3) /* 0.00006766, not 6.766e-05 */
        snprintf(out, size, "%.*f %s", 3 - (int)floor(log10(x)), x, cur);
    else
        snprintf(out, size, "%.4g %s", x, cur);
}

/* x in format, or n/a when it is not a number. */
const char *format_real(char *out, size_t size, const char *format,
                        double x)
{
    if (isfinite(x))
        snprintf(out, size, format, x);
    else
        snprintf(out, size, "n/a");
    return out;
}
