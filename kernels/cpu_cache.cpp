// kernels/cpu_cache.cpp: a caching CPU allocator for large blocks, active only on threads that
// opted in (our training step, or a Python loop inside alexnet_rs.ops.cpu_cache()), so the rest
// of the process keeps PyTorch's own allocator.
//
// Why: PyTorch's CPU allocator is posix_memalign/free. glibc serves blocks above its mmap
// threshold (dynamic, at most 32 MiB) with a fresh mapping and unmaps them on free, and trims the
// heap top when more than twice that is free, so every training step page-faults its large
// buffers in again: fc6's 151 MB and fc7's 67 MB weight gradients, activations, im2col
// workspaces. The kernel zeroes each fresh page (~4 GB/s here). Keeping those blocks and handing
// them back when the same size is asked for again removes the faults (BENCHMARKS.md).
//
// How: installed once as c10's CPU allocator (the first time a thread opts in), it forwards
// every request to the allocator it replaced (unchanged DataPtr, deleter and profiler reporting)
// unless the calling thread is inside a scope (alexnet_rs_cpu_cache_enter/exit) and the request
// is at least kMinBytes. Those are rounded up to whole pages and served from a free list of
// blocks of exactly that size, or freshly allocated. A freed cached block goes back on its list
// while any scope is open anywhere in the process, else to free(); when the last scope closes the
// lists are emptied, so outside our training loop the process holds no cached memory.
// The lists hold at most kMaxCachedBytes; beyond that the oldest free blocks are released.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <atomic>
#include <cstdint>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "ops.h"

namespace alexnet_rs {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;          // 1 MiB: below, glibc's bins do well
constexpr size_t kPage = 4096;
constexpr size_t kMaxCachedBytes = size_t(2) << 30;    // free blocks kept at most (2 GiB)

thread_local int tls_depth = 0;

struct Stats {
  int64_t hits = 0, misses = 0, cached_bytes = 0, live_bytes = 0;
};

class CachingCpuAllocator final : public c10::Allocator {
 public:
  explicit CachingCpuAllocator(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(size_t n) override {
    if (tls_depth == 0 || n < kMinBytes) return base_->allocate(n);
    const size_t r = (n + kPage - 1) / kPage * kPage;
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(m_);
      auto it = free_.find(r);
      if (it != free_.end() && !it->second.empty()) {
        p = it->second.back()->first;
        order_.erase(it->second.back());
        it->second.pop_back();
        stats_.cached_bytes -= int64_t(r);
        stats_.hits++;
      } else {
        stats_.misses++;
      }
    }
    if (p == nullptr) p = c10::alloc_cpu(r);  // throws on failure, as PyTorch's allocator does
    {
      std::lock_guard<std::mutex> lock(m_);
      live_[p] = r;
      stats_.live_bytes += int64_t(r);
    }
    return {p, p, &deleter, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &deleter; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // A scope opened (+1) or closed (-1) on some thread; the last close empties the lists.
  void scopes(int delta) {
    std::vector<void*> release;
    {
      std::lock_guard<std::mutex> lock(m_);
      open_scopes_ += delta;
      if (open_scopes_ == 0) drain(0, release);
    }
    for (void* p : release) c10::free_cpu(p);
  }

  Stats stats() {
    std::lock_guard<std::mutex> lock(m_);
    return stats_;
  }

  static CachingCpuAllocator* instance;

 private:
  static void deleter(void* p) { instance->release(p); }

  void release(void* p) {
    std::vector<void*> release;
    bool ours = false;
    {
      std::lock_guard<std::mutex> lock(m_);
      auto it = live_.find(p);
      if (it != live_.end()) {
        ours = true;
        const size_t r = it->second;
        live_.erase(it);
        stats_.live_bytes -= int64_t(r);
        if (open_scopes_ > 0) {
          free_[r].push_back(order_.insert(order_.end(), {p, r}));
          stats_.cached_bytes += int64_t(r);
          drain(kMaxCachedBytes, release);
        } else {
          release.push_back(p);
        }
      }
    }
    for (void* q : release) c10::free_cpu(q);
    // Not ours: a block of the allocator we replaced, handed out by raw_allocate.
    if (!ours) base_->raw_deleter()(p);
  }

  // Releases the oldest free blocks until at most `keep` bytes stay cached. Caller holds m_.
  void drain(size_t keep, std::vector<void*>& out) {
    while (size_t(stats_.cached_bytes) > keep && !order_.empty()) {
      const auto oldest = order_.begin();
      const auto [p, r] = *oldest;
      auto& list = free_[r];
      for (size_t i = 0; i < list.size(); ++i) {
        if (list[i] == oldest) {
          list.erase(list.begin() + int64_t(i));
          break;
        }
      }
      order_.erase(oldest);
      stats_.cached_bytes -= int64_t(r);
      out.push_back(p);
    }
    if (keep == 0) {
      order_.clear();
      free_.clear();
    }
  }

  c10::Allocator* base_;
  std::mutex m_;
  using FreeList = std::list<std::pair<void*, size_t>>;
  FreeList order_;                                                  // free blocks, oldest first
  std::unordered_map<size_t, std::vector<FreeList::iterator>> free_;  // rounded size -> its free blocks
  std::unordered_map<void*, size_t> live_;               // our blocks in use -> size
  int open_scopes_ = 0;
  Stats stats_;
};

CachingCpuAllocator* CachingCpuAllocator::instance = nullptr;

// Installs the allocator once (never uninstalled: blocks it handed out may outlive any scope).
CachingCpuAllocator* installed() {
  static CachingCpuAllocator* a = [] {
    auto* alloc = new CachingCpuAllocator(c10::GetCPUAllocator());
    CachingCpuAllocator::instance = alloc;
    c10::SetCPUAllocator(alloc, /*priority=*/100);
    return c10::GetCPUAllocator() == alloc ? alloc : nullptr;
  }();
  return a;
}

}  // namespace
}  // namespace alexnet_rs

extern "C" {

// Opens a caching scope on this thread; returns 1 if the cache is active, 0 if another allocator
// of higher priority kept it from being installed (then nothing changes).
int32_t alexnet_rs_cpu_cache_enter() noexcept {
  try {
    auto* a = alexnet_rs::installed();
    if (a == nullptr) return 0;
    alexnet_rs::tls_depth++;
    a->scopes(+1);
    return 1;
  } catch (...) {
    return 0;
  }
}

// Closes the scope opened by a successful enter on this thread.
void alexnet_rs_cpu_cache_exit() noexcept {
  auto* a = alexnet_rs::installed();
  if (a == nullptr || alexnet_rs::tls_depth == 0) return;
  alexnet_rs::tls_depth--;
  a->scopes(-1);
}

// hits, misses, free cached bytes, live cached bytes (for tests and benchmarks).
void alexnet_rs_cpu_cache_stats(int64_t* out4) noexcept {
  auto* a = alexnet_rs::CachingCpuAllocator::instance;
  const alexnet_rs::Stats s = a != nullptr ? a->stats() : alexnet_rs::Stats{};
  out4[0] = s.hits;
  out4[1] = s.misses;
  out4[2] = s.cached_bytes;
  out4[3] = s.live_bytes;
}

}  // extern "C"
