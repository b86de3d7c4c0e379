/* The part of the CUDA runtime that engine/cuda uses, for the CPU emulation (make cuda-emu):
 * device memory is host memory, kernels run their threads in turn. Not the real header. */
#pragma once
#include <cstddef>
#include <cstdint>
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
typedef enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorNoDevice = 100
} cudaError_t;
typedef enum {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3
} cudaMemcpyKind;
typedef struct CUstream_st *cudaStream_t;
#define cudaStreamNonBlocking 1
struct cudaDeviceProp {
    char name[256];
    int major, minor; /* compute capability: 9.0 (an H100), or CUEMU_CC="major.minor" */
};
const char *cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t s);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s);

/* device side */
extern dim3 threadIdx, blockIdx, blockDim, gridDim;
void __syncthreads(void);
float cuemu_shfl(float v, int o);
double cuemu_shfl(double v, int o);
template <typename T> T __shfl_down_sync(unsigned mask, T v, int o)
{
    (void)mask;
    return cuemu_shfl(v, o);
}
