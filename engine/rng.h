/* Counter-based random numbers: a value depends only on (seed, index), so dropout masks,
 * initialisation and augmentation are the same on every backend and thread count. */
#ifndef ENG_RNG_H
#define ENG_RNG_H

#include <stdint.h>

#ifdef __CUDACC__
#define ENG_HD __host__ __device__
#else
#define ENG_HD
#endif

/* splitmix64 finaliser of seed and index. */
static inline ENG_HD uint64_t eng_hash64(uint64_t seed, uint64_t index)
{
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + index + 0x632BE59BD9B4E019ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1) with 24 random bits. */
static inline ENG_HD float eng_uniform(uint64_t seed, uint64_t index)
{
    return (float)(eng_hash64(seed, index) >> 40) * (1.0f / 16777216.0f);
}

/* A small sequential generator for host-side work (weight init, shuffles). */
typedef struct eng_rng {
    uint64_t seed, counter;
    double spare; /* Box-Muller makes two deviates at a time */
    int has_spare;
} eng_rng;

static inline void eng_rng_init(eng_rng *r, uint64_t seed)
{
    r->seed = seed;
    r->counter = 0;
    r->has_spare = 0;
}

static inline uint64_t eng_rng_u64(eng_rng *r) { return eng_hash64(r->seed, r->counter++); }

/* Uniform double in [0, 1) with 53 bits. */
static inline double eng_rng_uniform(eng_rng *r) { return (double)(eng_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); }

/* Standard normal by Box-Muller; reproducible for a given seed and call sequence. */
double eng_rng_normal(eng_rng *r);

#endif
