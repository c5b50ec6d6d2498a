/* How the console writes figures: n/a for a figure that is not a number,
 * money and bytes in units a person reads at a glance. */
#ifndef MOECTL_TUI_CONSOLE_FORMAT_H
#define MOECTL_TUI_CONSOLE_FORMAT_H

#include <stddef.h>

#include "engine/core/format.h" /* format_bytes */

/* "4:05" under an hour, "2h07m" above. */
void format_duration(char *out, size_t size, double seconds);

/* "1.23M EUR", "4.5k EUR", "0.00006766 EUR", "12.34 EUR". */
void format_money(char *out, size_t size, double amount,
                  const char *currency);


/* x written with format, or "n/a"; returns out. */
const char *format_real(char *out, size_t size, const char *format,
                        double x);

#endif
