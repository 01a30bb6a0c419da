#pragma once
// HOST_DEVICE marks the per-sample math that the CPU and CUDA kernels share (one header per
// rule, compiled by g++ for the CPU and by nvcc for the GPU), as torchvision does.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define HOST_DEVICE __host__ __device__
#else
#define HOST_DEVICE
#endif
