// Plain C interface of the CUDA kernels (kernels/*.cu), which include no torch headers: nvcc
// only compiles CUDA, and the torch glue (dtype/device checks, streams, allocation) lives in
// kernels/*_cuda.cpp. Each launcher returns null on success or a static CUDA error string.
#pragma once
#include <cstdint>

enum AlexnetDtype { kAlexnetF32 = 0, kAlexnetF64 = 1, kAlexnetF16 = 2, kAlexnetBF16 = 3 };

// Shape of an LRN problem: N samples, C channels, S spatial positions, in channel-major
// (contiguous) or channel-minor (channels_last) layout.
struct AlexnetLrnShape {
  int64_t N, C, S;
  int channels_last;
};

extern "C" {
const char* alexnet_rs_lrn_cuda_forward(int dtype, const void* x, void* y, AlexnetLrnShape shape, int64_t size,
                                        double alpha, double beta, double k, void* stream);
const char* alexnet_rs_lrn_cuda_backward(int dtype, const void* dy, const void* x, void* dx, AlexnetLrnShape shape,
                                         int64_t size, double alpha, double beta, double k, void* stream);
}

// Shape of a grouped 2-D convolution (NCHW, dilation 1): input (N, Cin, H, W), weight
// (Cout, Cin/groups, KH, KW), output (N, Cout, OH, OW).
struct AlexnetConvShape {
  int64_t N, Cin, H, W, Cout, KH, KW, OH, OW, SH, SW, PH, PW;
  int groups;
};

extern "C" {
const char* alexnet_rs_conv_cuda_forward(int dtype, const void* x, const void* w, const void* b, void* y,
                                         AlexnetConvShape shape, void* stream);
const char* alexnet_rs_conv_cuda_backward_data(int dtype, const void* dy, const void* w, void* dx,
                                               AlexnetConvShape shape, void* stream);
// The weight gradient's scratch memory for `shape`, in bytes (0: none; `workspace` may be null).
int64_t alexnet_rs_conv_cuda_backward_weight_workspace(int dtype, AlexnetConvShape shape);
const char* alexnet_rs_conv_cuda_backward_weight(int dtype, const void* dy, const void* x, void* dw, void* workspace,
                                                 AlexnetConvShape shape, void* stream);
}
