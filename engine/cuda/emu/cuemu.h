/* Force-included when the CUDA backend's sources are compiled as plain C++ for the CPU
 * emulation: kernel qualifiers become nothing, launches become calls of cuemu_launch. */
#pragma once
#include "cuda_runtime.h"
#include <cmath>
#include <functional>
#include <math.h>
#include <tuple>
#include <utility>
#define __global__
#define __device__
#define __host__
#define __shared__ static
struct cuemu_cfg {
    dim3 grid, block;
    cuemu_cfg(dim3 g, dim3 b, size_t = 0, cudaStream_t = nullptr) : grid(g), block(b) {}
};
void cuemu_check_ptr(const void *p, const char *what);
template <typename T> void cuemu_check_arg(const T &) {}
template <typename T> void cuemu_check_arg(T *const &p) { cuemu_check_ptr((const void *)p, "kernel argument"); }
void cuemu_run(const dim3 &grid, const dim3 &block, bool coop, const std::function<void()> &body);
template <typename... P, typename... A> void cuemu_launch(bool coop, void (*k)(P...), cuemu_cfg c, A &&...a)
{
    std::tuple<P...> args(std::forward<A>(a)...);
    std::apply([](auto &...x) { (cuemu_check_arg(x), ...); }, args);
    cuemu_run(c.grid, c.block, coop, [&] { std::apply(k, args); });
}
