"""The timing helper of the op benches (lrn_cpu.py, lrn_pool.py, conv_layout.py)."""

import statistics
import time


def median_ms(fn, repeats):
    """Median wall time of `repeats` calls of fn(), in milliseconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3
