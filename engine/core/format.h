/* Figures for people: bytes in units read at a glance, the same in the
 * console and in the headless summary. */
#ifndef MOECTL_ENGINE_CORE_FORMAT_H
#define MOECTL_ENGINE_CORE_FORMAT_H

#include <stddef.h>

/* "1.5 GB": decimal units up to TB; "n/a" for a figure that is not one. */
void format_bytes(char *out, size_t size, double bytes);

#endif
