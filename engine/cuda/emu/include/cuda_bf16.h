/* The part of cuda_bf16.h that engine/cuda uses, for the CPU emulation (make cuda-emu): a
 * bfloat16 is the upper half of a float's bits, narrowed with round-to-nearest-even as the
 * GPU's cvt.rn.bf16.f32 does. Not the real header. */
#pragma once
#include <stdint.h>
#include <string.h>

struct __nv_bfloat16 {
    uint16_t x;
};

static inline __nv_bfloat16 __float2bfloat16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    __nv_bfloat16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u) { /* NaN stays NaN (rounding could carry it into inf) */
        h.x = (uint16_t)((u >> 16) | 0x0040u);
        return h;
    }
    u += 0x7fffu + ((u >> 16) & 1u); /* ties go to the even upper half; overflow gives inf */
    h.x = (uint16_t)(u >> 16);
    return h;
}

static inline float __bfloat162float(__nv_bfloat16 h)
{
    const uint32_t u = (uint32_t)h.x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
