/* Host-side normal deviates for weight initialisation. */
#include "rng.h"

#include <math.h>

double eng_rng_normal(eng_rng *r)
{
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    double u1 = eng_rng_uniform(r), u2 = eng_rng_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
    r->spare = rad * sin(th);
    r->has_spare = 1;
    return rad * cos(th);
}
