"""The machine's limits for the benchmark's roofline fractions, measured with numpy.

Prints one JSON object: float32 GEMM GFLOP/s (n x n matmul, numpy's BLAS with its default threads) and
memory read bandwidth GB/s (numpy sum over a ~1 GB float32 array, one thread).
Usage: python machine_limits.py [--gemm-n 2048] [--bytes 1e9]
"""
import argparse
import json
import time

import numpy as np


def best_of(fn, reps):
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gemm-n", type=int, default=2048)
    p.add_argument("--bytes", type=float, default=1e9)
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()

    rng = np.random.default_rng(0)
    n = a.gemm_n
    x = rng.standard_normal((n, n), dtype=np.float32)
    y = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(x, y, out=out)  # warm-up
    t_gemm = best_of(lambda: np.matmul(x, y, out=out), a.reps)

    count = int(a.bytes) // 4
    big = np.ones(count, dtype=np.float32)  # touched: every page is resident
    big.sum()
    t_sum = best_of(big.sum, a.reps)

    blas = None
    try:
        from threadpoolctl import threadpool_info
        blas = [{k: i.get(k) for k in ("internal_api", "version", "num_threads", "architecture")} for i in threadpool_info()]
    except Exception:
        pass
    print(json.dumps({
        "numpy": np.__version__,
        "blas": blas,
        "gemm_n": n,
        "gemm_seconds": t_gemm,
        "gemm_gflops": 2 * n ** 3 / t_gemm / 1e9,
        "bandwidth_bytes": count * 4,
        "bandwidth_seconds": t_sum,
        "bandwidth_gbs": count * 4 / t_sum / 1e9,
    }))


if __name__ == "__main__":
    main()
