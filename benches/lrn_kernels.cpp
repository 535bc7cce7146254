// The CPU LRN kernels alone: kernels/lrn_cpu_kernels.h (the AVX2 + FMA build the op picks on this
// machine) timed in a C++ loop over preallocated buffers, so no allocation, page fault, dispatcher
// or autograd is in the figure; anchor: y = 2 x over the same tensor (one read, one write: what
// memory alone costs). AlexNet's two LRN shapes, float32, the paper's constants.
//
//     make bench-lrn-kernels            (OMP_NUM_THREADS=2, batch 32, median of 31)
//
// Prints a markdown table; the checksum line keeps the compiler from dropping the work.
#define LRN_KERNEL_NS avx2
#include "lrn_cpu_kernels.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

using namespace alexnet_rs;

template <typename F>
double median_ms(F f, int repeats) {
  std::vector<double> t;
  for (int r = 0; r < repeats; ++r) {
    const auto a = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int main(int argc, char** argv) {
  const int64_t batch = argc > 1 ? std::atoll(argv[1]) : 32;
  const int repeats = 31;
  struct Shape {
    const char* name;
    int64_t C, H;
  } shapes[] = {{"conv1 96x55x55", 96, 55}, {"conv2 256x27x27", 256, 27}};
  std::printf("%d threads, batch %lld, float32, median of %d\n", omp_get_max_threads(), (long long)batch, repeats);
  std::printf("| shape | lrn forward (ms) | lrn backward (ms) | y = 2 x (ms) |\n|---|---|---|---|\n");
  double checksum = 0;
  for (const Shape& s : shapes) {
    const LrnTask t{batch, s.C, s.H * s.H, false, 5, 1e-4, 0.75, 2.0};
    const size_t n = size_t(batch * s.C * s.H * s.H);
    std::vector<float> x(n), y(n), dy(n), dx(n);
    for (size_t i = 0; i < n; ++i) {  // relu(conv)-like: half zeros, the rest up to 50
      x[i] = std::max(0.0f, float((i * 2654435761u) % 1000) / 10.0f - 50.0f);
      dy[i] = float((i * 40503u) % 1000) / 1000.0f - 0.5f;
    }
    const double f = median_ms([&] { avx2::lrn_forward<float, float>(x.data(), y.data(), t); }, repeats);
    const double b = median_ms([&] { avx2::lrn_backward<float, float>(dy.data(), x.data(), dx.data(), t); }, repeats);
    for (size_t i = 0; i < n; i += 97) checksum += y[i] + dx[i];
    const double c = median_ms(
        [&] {
#pragma omp parallel for schedule(static)
          for (size_t i = 0; i < n; ++i) y[i] = 2 * x[i];
        },
        repeats);
    std::printf("| %s | %.2f | %.2f | %.2f |\n", s.name, f, b, c);
  }
  std::printf("checksum %g\n", checksum);
}
