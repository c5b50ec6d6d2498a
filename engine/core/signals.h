/* The one signal setup: handlers only record what arrived (htop's rule);
 * the main loops read the flag and decide. */
#ifndef MOECTL_ENGINE_SIGNALS_H
#define MOECTL_ENGINE_SIGNALS_H

#include <signal.h>

/* Installs handler for each of the signals in the 0-terminated list, with
 * no flags (a blocking call returns EINTR) and an empty mask. */
void signals_install(void (*handler)(int), const int *signals);

#endif
