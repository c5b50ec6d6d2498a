/* cluster.placement: the rank of each routed expert. */
#include "engine/config/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int config_placement(const config *cfg, int *placement, char *reason,
                     size_t reason_size)
{
    const char *p = cfg->cluster.placement;
    int L = cfg->model.n_layers, E = cfg->moe.n_experts;
    int groups = 0, in_group = 0, total = 0;
    while (*p == ' ' || *p == '\t')
        p++;
    if (!*p)
        return 0;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (*p == ';' || *p == '\0') {
            if (in_group != E) {
                snprintf(reason, reason_size, "layer group %d has %d ranks; "
                         "expected moe.n_experts = %d", groups + 1, in_group,
                         E);
                return -1;
            }
            groups++;
            in_group = 0;
            if (*p == '\0')
                break;
            p++;
            continue;
        }
        char *end;
        long rank = strtol(p, &end, 10);
        if (end == p || rank < 0 || rank >= cfg->cluster.device_count) {
            snprintf(reason, reason_size, "expected a rank in 0..%d, got "
                     "\"%.*s\"", cfg->cluster.device_count - 1,
                     (int)strcspn(p, " \t,;"), p);
            return -1;
        }
        if (groups >= L || in_group >= E) {
            snprintf(reason, reason_size, "too many ranks: expected %d "
                     "group(s) of %d (layers x experts)", L, E);
            return -1;
        }
        if (placement)
            placement[groups * E + in_group] = (int)rank;
        in_group++;
        total++;
        p = end;
    }
    if (groups != 1 && groups != L) {
        snprintf(reason, reason_size, "%d layer groups; expected 1 (for every "
                 "layer) or model.n_layers = %d", groups, L);
        return -1;
    }
    if (groups == 1 && placement)
        for (int l = 1; l < L; l++)
            memcpy(placement + (size_t)l * E, placement,
                   (size_t)E * sizeof *placement);
    (void)total;
    return 1;
}
