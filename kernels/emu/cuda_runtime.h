// kernels/emu/cuda_runtime.h: a host emulation of the CUDA programming model, so that the very
// kernel source in kernels/*.cu compiles with g++ (`-x c++ -I kernels/emu`) and runs on the CPU
// against independent references (tests/cuda_emu/, `make cuda-emu`). See kernels/emu/README.md.
//
// What it models, and how:
// - Every CUDA thread of a block is a fiber with its own stack; `__syncthreads()` is a real
//   barrier. A block runs its threads one at a time in a fixed order, each until it blocks
//   (barrier, warp-collective WMMA call, exit): forward order, reversed order or a fixed shuffle
//   (cuda_emu_set_schedule). A missing or misplaced barrier therefore changes the result
//   deterministically, and a correct kernel gives bit-identical results under every order.
// - Blocks run one after another, so a `__shared__` variable (a function-local static here) is
//   private to the running block; its bytes are set to 0xFF (NaN in every float format) before
//   each block, so a read of shared memory this block did not write shows up.
// - Launches are synchronous. A bad configuration (a zero dimension, more than 1024 threads,
//   limits of the grid and block dimensions) is reported by cudaGetLastError and nothing runs, as
//   on a GPU; a fault the emulator detects while a kernel runs (barrier divergence, a misaligned
//   WMMA pointer or a bad `ldm`) aborts the launch and is reported by the next cudaGetLastError
//   (a GPU reports those at the next synchronisation), with details in cuda_emu_last_fault().
// - `kernel<<<grid, block, smem, stream>>>(args)` is not C++: kernels launch through
//   CUDA_EMU_LAUNCH(grid, block, smem, stream, kernel)(args), which kernels/cuda_common.cuh
//   maps to the real syntax under nvcc.
// - One launch at a time per process (a mutex); run several processes for parallelism.
#pragma once
#ifdef __CUDACC__
#error "kernels/emu/ is the host emulation of CUDA: compile .cu files with g++ -x c++, not nvcc"
#endif

#include <math.h>  // sqrt, pow, ... with their float overloads in the global namespace

#include <cstddef>
#include <cstdint>
#include <tuple>
#include <utility>

#define CUDA_EMU 1

// ---- Keywords and qualifiers ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// A function-local static: blocks run one at a time (see above). The build moves these into a
// section of their own (tests/cuda_emu/emu.py) that the emulator poisons before every block.
#define __shared__ static

// ---- Vector types and the built-in indices ----
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

namespace cuda_emu {
// The launch and thread being emulated (set by the emulator around each fiber switch).
struct Current {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
};
extern Current current;
}  // namespace cuda_emu

#define threadIdx (::cuda_emu::current.thread_idx)
#define blockIdx (::cuda_emu::current.block_idx)
#define blockDim (::cuda_emu::current.block_dim)
#define gridDim (::cuda_emu::current.grid_dim)
constexpr int warpSize = 32;

// ---- Runtime API: errors and streams ----
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorMisalignedAddress = 716,
  cudaErrorLaunchFailure = 719,
};
typedef struct CUstream_st* cudaStream_t;

extern "C" cudaError_t cudaGetLastError();
extern "C" cudaError_t cudaPeekAtLastError();
extern "C" const char* cudaGetErrorString(cudaError_t e);
extern "C" cudaError_t cudaDeviceSynchronize();
extern "C" cudaError_t cudaStreamSynchronize(cudaStream_t s);

// ---- Device functions ----
void __syncthreads();

// CUDA's integer min/max overloads (device code calls them unqualified, 64-bit included).
#define CUDA_EMU_MINMAX(T)                                   \
  __forceinline__ T min(T a, T b) { return b < a ? b : a; } \
  __forceinline__ T max(T a, T b) { return a < b ? b : a; }
CUDA_EMU_MINMAX(int)
CUDA_EMU_MINMAX(unsigned)
CUDA_EMU_MINMAX(long)
CUDA_EMU_MINMAX(unsigned long)
CUDA_EMU_MINMAX(long long)
CUDA_EMU_MINMAX(unsigned long long)
#undef CUDA_EMU_MINMAX
__forceinline__ float min(float a, float b) { return fminf(a, b); }
__forceinline__ float max(float a, float b) { return fmaxf(a, b); }
__forceinline__ double min(double a, double b) { return fmin(a, b); }
__forceinline__ double max(double a, double b) { return fmax(a, b); }

// ---- Launches ----
namespace cuda_emu {

struct LaunchConfig {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
};

// Runs `thread_body(ctx)` as every thread of every block of the grid (emu.cpp).
void launch(const LaunchConfig& cfg, void (*thread_body)(void*), void* ctx);

template <typename... P>
struct Launcher {
  LaunchConfig cfg;
  void (*kernel)(P...);

  template <typename... A>
  void operator()(A&&... args) const {
    // Arguments convert to the kernel's parameter types once, as a CUDA launch copies them;
    // every thread then gets its own copy (parameters are per-thread values).
    struct Ctx {
      void (*kernel)(P...);
      std::tuple<P...> params;
    } ctx{kernel, std::tuple<P...>(std::forward<A>(args)...)};
    launch(
        cfg,
        [](void* c) {
          auto* x = static_cast<Ctx*>(c);
          std::tuple<P...> own = x->params;
          std::apply(x->kernel, own);
        },
        &ctx);
  }
};

template <typename... P>
Launcher<P...> launcher(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, void (*kernel)(P...)) {
  return Launcher<P...>{LaunchConfig{grid, block, smem, stream}, kernel};
}

// A warp-collective operation (the WMMA calls). Each lane arrives with its own WarpOp; when
// every lane of the warp has arrived, the emulator checks that they agree (the same function,
// memory operand, ldm and layout, and the same fragment variables: equal offsets from each lane's
// stack top) and calls `run` once, with the first lane's op.
struct WarpOp {
  const char* name;
  void (*run)(const WarpOp& op);
  const void* mem;  // the memory operand: load source or store destination
  unsigned ldm;
  int layout;
  const void* frags[4];  // this lane's fragments (unused slots null)
  uintptr_t frag_key[4];  // set by the emulator: where each fragment sits in the lane's stack
};
void warp_collective(WarpOp& op);

// Aborts the running launch with `error` and a message (a device-side fault).
[[noreturn]] void fault(cudaError_t error, const char* message);

}  // namespace cuda_emu

#define CUDA_EMU_LAUNCH(grid, block, smem, stream, ...) ::cuda_emu::launcher(grid, block, smem, stream, __VA_ARGS__)

// ---- Control of the emulator (for harnesses) ----
extern "C" {
// 0: threads in index order, 1: reversed, 2: a fixed shuffle (seeded by the block index).
void cuda_emu_set_schedule(int schedule);
// The detail of the last fault (empty if none); cleared by cuda_emu_clear_fault.
const char* cuda_emu_last_fault();
void cuda_emu_clear_fault();
// Counters since the process started: launches, blocks, barrier releases, warp collectives.
void cuda_emu_counters(uint64_t out[4]);
}
