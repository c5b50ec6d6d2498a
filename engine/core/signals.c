#include "engine/core/signals.h"

#include <string.h>

void signals_install(void (*handler)(int), const int *signals)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    for (const int *s = signals; *s; s++)
        sigaction(*s, &sa, NULL);
}
