/* Host-side normal deviates for weight initialisation. */
#include "rng.h"

#include <math.h>

double eng_rng_normal(eng_rng *r)
{
    double u1 = eng_rng_uniform(r), u2 = eng_rng_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
