#include "engine/model/profile.h"

const char *const model_part_names[MODEL_PART_COUNT] = {
#define X(name) #name,
    MODEL_PARTS(X)
#undef X
};

void profile_begin(model_profile *p, double now)
{
    p->lap_start = now;
}

void profile_lap(model_profile *p, enum model_part part, int backward,
                 double now, double correction_s)
{
    double *bucket = backward ? &p->backward_s[part] : &p->forward_s[part];
    *bucket += now - p->lap_start + correction_s;
    p->lap_start = now;
}
