// kernels/emu/emu.cpp: the runtime of the host CUDA emulation (cuda_runtime.h says what it
// models). Each CUDA thread is a fiber; a block's fibers run one at a time on the calling OS
// thread, in the order the schedule gives, each until it blocks on a barrier or a warp-collective
// call or exits. Then pending warp collectives run, then a barrier that every live thread has
// reached is released, and the round repeats.
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

// The `__shared__` variables of the kernel objects, gathered into one section by the build.
extern "C" char __start_cuda_emu_shared[] __attribute__((weak));
extern "C" char __stop_cuda_emu_shared[] __attribute__((weak));

namespace cuda_emu {

Current current;

namespace {

// ---- Context switch: x86-64 System V callee-saved registers. The FP control state (MXCSR, x87
// control word) is shared by all fibers: kernels do not change rounding modes. ----
#if defined(__x86_64__)
extern "C" void cuda_emu_switch(void** save_sp, void* load_sp);
extern "C" void cuda_emu_trampoline();
asm(R"(
    .text
    .globl cuda_emu_switch
    .hidden cuda_emu_switch
    .type cuda_emu_switch, @function
cuda_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cuda_emu_switch, .-cuda_emu_switch

    .globl cuda_emu_trampoline
    .hidden cuda_emu_trampoline
    .type cuda_emu_trampoline, @function
cuda_emu_trampoline:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size cuda_emu_trampoline, .-cuda_emu_trampoline
)");
#else
#error "the CUDA emulation's context switch is written for x86-64"
#endif

enum class State { Ready, Barrier, Warp, Done };

struct Fiber {
  void* sp = nullptr;
  char* stack_lo = nullptr;
  size_t stack_size = 0;
  uint3 tid{};
  unsigned warp = 0;
  State state = State::Done;
  WarpOp* op = nullptr;
  bool clean = true;  // its stack holds no frames of an abandoned run
  void* asan_fake = nullptr;
};

// Thrown inside a fiber by fault(); caught at the bottom of the fiber's stack.
struct FaultUnwind {};

// Kernels need a few KiB of stack. Small stacks keep the 1024 of them within reach of the TLB.
constexpr size_t kStack = EMU_ASAN ? 256 * 1024 : 64 * 1024;
constexpr unsigned kMaxThreads = 1024;

std::mutex g_launch_mutex;
std::vector<Fiber> g_fibers;
char* g_stacks = nullptr;
void* g_sched_sp = nullptr;
Fiber* g_running = nullptr;
void (*g_body)(void*) = nullptr;
void* g_ctx = nullptr;
int g_schedule = 0;
cudaError_t g_last_error = cudaSuccess;
cudaError_t g_fault = cudaSuccess;
std::string g_fault_message;
uint64_t g_counters[4] = {0, 0, 0, 0};  // launches, blocks, barrier releases, warp collectives
// The running block: how many threads are done, at a barrier, at a warp collective (per warp too).
unsigned g_n_threads = 0, g_block_dim_x = 1, g_block_dim_y = 1;
unsigned g_n_done = 0, g_n_barrier = 0, g_n_warp = 0;
unsigned g_warp_waiting[kMaxThreads / 32];

// The current round: the schedule's order, and the position of the running thread in it.
std::vector<unsigned> g_order;
std::vector<long> g_position;  // of each thread in g_order
long g_cursor = 0;

#if EMU_ASAN
// The scheduler's stack (the launching OS thread's), for ASan's fiber annotations.
const void* g_main_bottom = nullptr;
size_t g_main_size = 0;
void* g_sched_fake = nullptr;

void note_main_stack() {
  pthread_attr_t a;
  void* lo = nullptr;
  size_t size = 0;
  if (pthread_getattr_np(pthread_self(), &a) == 0) {
    pthread_attr_getstack(&a, &lo, &size);
    pthread_attr_destroy(&a);
  }
  g_main_bottom = lo;
  g_main_size = size;
}
#endif

// The next ready thread of this round, in the schedule's order, or null when the round is over.
Fiber* next_in_round() {
  if (g_fault != cudaSuccess) return nullptr;
  while (++g_cursor < static_cast<long>(g_order.size())) {
    Fiber& f = g_fibers[g_order[g_cursor]];
    if (f.state == State::Ready) return &f;
  }
  return nullptr;
}

// Runs one round: every ready thread, in order, until it blocks or exits. Each thread hands
// over to the next one directly; the last returns here.
void run_round() {
  g_cursor = -1;
  Fiber* first = next_in_round();
  if (first == nullptr) return;
  g_running = first;
  current.thread_idx = first->tid;
#if EMU_ASAN
  __sanitizer_start_switch_fiber(&g_sched_fake, first->stack_lo, first->stack_size);
#endif
  cuda_emu_switch(&g_sched_sp, first->sp);
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(g_sched_fake, nullptr, nullptr);
#endif
  g_running = nullptr;
}

// Leaves fiber f (blocked, or exiting for good) for the next thread of the round or the scheduler.
void leave(Fiber& f, bool exiting) {
  Fiber* to = next_in_round();
  if (to == &f) return;  // its own warp collective just completed: it goes on
#if EMU_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f.asan_fake, to ? to->stack_lo : g_main_bottom,
                                 to ? to->stack_size : g_main_size);
#else
  (void)exiting;
#endif
  if (to != nullptr) {
    g_running = to;
    current.thread_idx = to->tid;
    cuda_emu_switch(&f.sp, to->sp);
  } else {
    cuda_emu_switch(&f.sp, g_sched_sp);
  }
  // Resumed by the scheduler or another thread, which set g_running and current.
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(f.asan_fake, nullptr, nullptr);
#endif
}

void fiber_main(Fiber* f) {
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  try {
    g_body(g_ctx);
  } catch (const FaultUnwind&) {
  }
  f->state = State::Done;
  ++g_n_done;
  leave(*f, true);
  __builtin_unreachable();
}

void ensure_stacks() {
  if (g_stacks != nullptr) return;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* m = mmap(nullptr, kStack * kMaxThreads, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (m == MAP_FAILED) {
    perror("cuda_emu: mmap of fiber stacks");
    abort();
  }
  g_stacks = static_cast<char*>(m);
  g_fibers.resize(kMaxThreads);
  for (unsigned i = 0; i < kMaxThreads; ++i) {
    Fiber& f = g_fibers[i];
    f.stack_lo = g_stacks + i * kStack;
    f.stack_size = kStack;
    mprotect(f.stack_lo, page, PROT_NONE);  // a stack overflow faults instead of corrupting a neighbour
  }
}

// A fresh frame at the top of f's stack that `ret`s into cuda_emu_trampoline(fiber_main, f).
void reset_fiber(Fiber& f, uint3 tid) {
#if EMU_ASAN
  if (!f.clean) ASAN_UNPOISON_MEMORY_REGION(f.stack_lo + 4096, f.stack_size - 4096);
#endif
  f.clean = true;
  // After the `ret`, the trampoline starts with a 16-byte aligned stack, as a `call` needs.
  const uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack_lo + f.stack_size) & ~uintptr_t(15)) - 16;
  auto* frame = reinterpret_cast<uint64_t*>(top - 56);
  frame[0] = 0;                                        // r15
  frame[1] = 0;                                        // r14
  frame[2] = reinterpret_cast<uint64_t>(&fiber_main);  // r13: called by the trampoline
  frame[3] = reinterpret_cast<uint64_t>(&f);           // r12: its argument
  frame[4] = 0;                                        // rbx
  frame[5] = 0;                                        // rbp
  frame[6] = reinterpret_cast<uint64_t>(&cuda_emu_trampoline);
  f.sp = frame;
  f.tid = tid;
  f.warp = (tid.x + g_block_dim_x * (tid.y + g_block_dim_y * tid.z)) / warpSize;
  f.state = State::Ready;
  f.op = nullptr;
  f.asan_fake = nullptr;
}

void set_fault(cudaError_t e, const std::string& message) {
  if (g_fault != cudaSuccess) return;  // the first fault is the one reported
  g_fault = e;
  g_fault_message = message;
}

std::string thread_name(const Fiber& f) {
  char b[64];
  snprintf(b, sizeof b, "thread (%u,%u,%u)", f.tid.x, f.tid.y, f.tid.z);
  return b;
}

std::string where() {
  char b[96];
  snprintf(b, sizeof b, "block (%u,%u,%u): ", current.block_idx.x, current.block_idx.y, current.block_idx.z);
  return b;
}

// Bytes 0xFF in every __shared__ variable: NaN in float, double, half and bfloat16.
__attribute__((no_sanitize_address)) void poison_shared() {
  if (__start_cuda_emu_shared == nullptr) return;
  for (volatile char* p = __start_cuda_emu_shared; p < __stop_cuda_emu_shared; ++p) *p = char(0xFF);
}

std::vector<unsigned> schedule_order(unsigned n, uint64_t block_linear) {
  std::vector<unsigned> order(n);
  for (unsigned i = 0; i < n; ++i) order[i] = i;
  if (g_schedule == 1) std::reverse(order.begin(), order.end());
  if (g_schedule == 2) {
    uint64_t s = 0x9E3779B97F4A7C15ull ^ block_linear;
    for (unsigned i = n; i > 1; --i) {  // Fisher-Yates with splitmix64
      s += 0x9E3779B97F4A7C15ull;
      uint64_t z = s;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      z ^= z >> 31;
      std::swap(order[i - 1], order[z % i]);
    }
  }
  return order;
}

bool agree(const WarpOp& a, const WarpOp& b) {
  return a.run == b.run && a.mem == b.mem && a.ldm == b.ldm && a.layout == b.layout &&
         std::equal(a.frag_key, a.frag_key + 4, b.frag_key);
}

// Called by the last lane of warp w to arrive at a warp collective: checks that the lanes agree,
// runs the operation once, and lets the warp go on at once (the round's cursor moves back to
// its first lane), as a GPU may run one warp far ahead of the others. A missing __syncthreads()
// between warp-collective phases of different warps then shows.
void complete_warp(unsigned w) {
  const unsigned lo = w * warpSize, hi = std::min(g_n_threads, lo + warpSize);
  for (unsigned t = lo + 1; t < hi; ++t) {
    if (!agree(*g_fibers[lo].op, *g_fibers[t].op)) {
      set_fault(cudaErrorLaunchFailure, where() + "warp " + std::to_string(w) + ": lane " + std::to_string(t - lo) +
                                            " disagrees with lane 0 in wmma::" + g_fibers[lo].op->name +
                                            " (with wmma::" + g_fibers[t].op->name +
                                            "): function, pointer, ldm, layout or fragment differ");
      return;
    }
  }
  g_fibers[lo].op->run(*g_fibers[lo].op);
  ++g_counters[3];
  long first = g_cursor;
  for (unsigned t = lo; t < hi; ++t) {
    g_fibers[t].state = State::Ready;
    first = std::min(first, g_position[t]);
  }
  g_n_warp -= g_warp_waiting[w];
  g_warp_waiting[w] = 0;
  g_cursor = first - 1;
}

// A round ended with lanes waiting in a warp collective that the rest of their warp never
// reaches (they are at a barrier, or exited).
void divergent_warp_fault() {
  for (unsigned w = 0; w * warpSize < g_n_threads; ++w) {
    if (g_warp_waiting[w] == 0) continue;
    const unsigned lo = w * warpSize, hi = std::min(g_n_threads, lo + warpSize);
    const Fiber* waiting = nullptr;
    const Fiber* other = nullptr;
    for (unsigned t = lo; t < hi; ++t) {
      if (g_fibers[t].state == State::Warp && waiting == nullptr) waiting = &g_fibers[t];
      if (g_fibers[t].state != State::Warp && other == nullptr) other = &g_fibers[t];
    }
    set_fault(cudaErrorLaunchFailure, where() + "warp " + std::to_string(w) + ": " +
                                          std::to_string(g_warp_waiting[w]) + " lanes wait in wmma::" +
                                          waiting->op->name + " while " + thread_name(*other) +
                                          (other->state == State::Done ? " has exited" : " is at __syncthreads()"));
    return;
  }
}

// CUDA: a barrier in code that not every thread of the block reaches is undefined.
void divergent_barrier_fault(unsigned n) {
  const Fiber *exited = nullptr, *waiting = nullptr;
  for (unsigned t = 0; t < n; ++t) {
    if (g_fibers[t].state == State::Done && exited == nullptr) exited = &g_fibers[t];
    if (g_fibers[t].state == State::Barrier && waiting == nullptr) waiting = &g_fibers[t];
  }
  set_fault(cudaErrorLaunchFailure, where() + std::to_string(g_n_barrier) + " threads (e.g. " + thread_name(*waiting) +
                                        ") wait at __syncthreads() while " + std::to_string(g_n_done) + " (e.g. " +
                                        thread_name(*exited) + ") have exited: barrier in divergent code");
}

// Runs one block to completion (or to the first fault).
void run_block(const dim3& block, uint64_t block_linear) {
  const unsigned n = block.x * block.y * block.z;
  g_n_threads = n;
  g_block_dim_x = block.x;
  g_block_dim_y = block.y;
  for (unsigned i = 0; i < n; ++i)
    reset_fiber(g_fibers[i], uint3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)});
  g_n_done = g_n_barrier = g_n_warp = 0;
  std::fill(g_warp_waiting, g_warp_waiting + kMaxThreads / 32, 0u);
  poison_shared();
  g_order = schedule_order(n, block_linear);
  g_position.resize(n);
  for (unsigned i = 0; i < n; ++i) g_position[g_order[i]] = i;
  while (g_fault == cudaSuccess) {
    run_round();  // afterwards every thread is done, at a barrier or in a warp collective
    if (g_fault != cudaSuccess) break;
    if (g_n_warp > 0) {
      divergent_warp_fault();
      break;
    }
    if (g_n_done == n) break;
    if (g_n_done > 0) {
      divergent_barrier_fault(n);
      break;
    }
    for (unsigned t = 0; t < n; ++t) g_fibers[t].state = State::Ready;  // all at the barrier
    g_n_barrier = 0;
    ++g_counters[2];
  }
  for (unsigned i = 0; i < n; ++i)
    if (g_fibers[i].state != State::Done) g_fibers[i].clean = false;
}

cudaError_t check_config(const LaunchConfig& c) {
  const dim3 &g = c.grid, &b = c.block;
  if (g.x == 0 || g.y == 0 || g.z == 0 || b.x == 0 || b.y == 0 || b.z == 0) return cudaErrorInvalidConfiguration;
  if (g.x > 2147483647u || g.y > 65535u || g.z > 65535u) return cudaErrorInvalidConfiguration;
  if (b.x > 1024u || b.y > 1024u || b.z > 64u) return cudaErrorInvalidConfiguration;
  if (uint64_t(b.x) * b.y * b.z > kMaxThreads) return cudaErrorInvalidConfiguration;
  if (c.smem > 48 * 1024) return cudaErrorInvalidValue;
  return cudaSuccess;
}

}  // namespace

void launch(const LaunchConfig& cfg, void (*thread_body)(void*), void* ctx) {
  const std::lock_guard<std::mutex> lock(g_launch_mutex);
  ++g_counters[0];
  const cudaError_t bad = check_config(cfg);
  if (bad != cudaSuccess) {
    g_last_error = bad;
    return;
  }
  ensure_stacks();
#if EMU_ASAN
  note_main_stack();
#endif
  g_body = thread_body;
  g_ctx = ctx;
  g_fault = cudaSuccess;
  current.grid_dim = cfg.grid;
  current.block_dim = cfg.block;
  for (unsigned z = 0; z < cfg.grid.z && g_fault == cudaSuccess; ++z)
    for (unsigned y = 0; y < cfg.grid.y && g_fault == cudaSuccess; ++y)
      for (unsigned x = 0; x < cfg.grid.x && g_fault == cudaSuccess; ++x) {
        current.block_idx = uint3{x, y, z};
        run_block(cfg.block, (uint64_t(z) * cfg.grid.y + y) * cfg.grid.x + x);
        ++g_counters[1];
      }
  if (g_fault != cudaSuccess) {
    g_last_error = g_fault;
    fprintf(stderr, "cuda_emu: kernel fault: %s\n", g_fault_message.c_str());
  }
  g_body = nullptr;
  g_ctx = nullptr;
}

void warp_collective(WarpOp& op) {
  Fiber& f = *g_running;
  // A fragment is a per-lane variable: lanes agree when theirs sit at the same stack offset.
  const uintptr_t top = reinterpret_cast<uintptr_t>(f.stack_lo + f.stack_size);
  for (int i = 0; i < 4; ++i) {
    const auto p = reinterpret_cast<uintptr_t>(op.frags[i]);
    const bool own = p >= reinterpret_cast<uintptr_t>(f.stack_lo) && p < top;
    op.frag_key[i] = own ? top - p : p;
  }
  f.op = &op;
  f.state = State::Warp;
  ++g_n_warp;
  const unsigned lo = f.warp * warpSize;
  if (++g_warp_waiting[f.warp] == std::min(g_n_threads, lo + warpSize) - lo) complete_warp(f.warp);
  leave(f, false);
  if (g_fault != cudaSuccess) throw FaultUnwind{};
}

[[noreturn]] void fault(cudaError_t error, const char* message) {
  set_fault(error, where() + thread_name(*g_running) + ": " + message);
  throw FaultUnwind{};
}

}  // namespace cuda_emu

void __syncthreads() {
  using namespace cuda_emu;
  Fiber& f = *g_running;
  f.state = State::Barrier;
  ++g_n_barrier;
  leave(f, false);
  if (g_fault != cudaSuccess) throw FaultUnwind{};
}

extern "C" cudaError_t cudaGetLastError() {
  const cudaError_t e = cuda_emu::g_last_error;
  cuda_emu::g_last_error = cudaSuccess;
  return e;
}

extern "C" cudaError_t cudaPeekAtLastError() { return cuda_emu::g_last_error; }

extern "C" cudaError_t cudaDeviceSynchronize() { return cuda_emu::g_last_error; }

extern "C" cudaError_t cudaStreamSynchronize(cudaStream_t) { return cuda_emu::g_last_error; }

extern "C" const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorMisalignedAddress: return "misaligned address";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unrecognized error code";
}

extern "C" void cuda_emu_set_schedule(int schedule) { cuda_emu::g_schedule = schedule; }

extern "C" const char* cuda_emu_last_fault() { return cuda_emu::g_fault_message.c_str(); }

extern "C" void cuda_emu_clear_fault() {
  cuda_emu::g_fault_message.clear();
  cuda_emu::g_last_error = cudaSuccess;
}

extern "C" void cuda_emu_counters(uint64_t out[4]) { std::memcpy(out, cuda_emu::g_counters, sizeof(uint64_t) * 4); }
