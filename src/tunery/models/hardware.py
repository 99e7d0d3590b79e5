"""What this machine computes fastest, measured rather than assumed.

CPUs differ wildly in bf16: without native support a bf16 matmul is many times slower than fp32,
while CPUs with AVX512-BF16 or AMX run it several times faster (measured on an AMD EPYC with
avx512_bf16: 850 vs 212 GFLOP/s). A ~50 ms probe decides; TUNERY_CPU_BF16=0/1 overrides it.
"""

import functools
import os
import time


@functools.lru_cache(maxsize=1)
def cpu_bf16_is_fast() -> bool:
    forced = os.environ.get("TUNERY_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    import torch

    def best(x, y) -> float:
        x @ y
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - t0)
        return min(times)

    a, b = torch.randn(256, 1024), torch.randn(1024, 1024)
    fp32 = best(a, b)
    bf16 = best(a.bfloat16(), b.bfloat16())
    return bf16 * 1.5 < fp32  # worth it only when clearly faster


def default_dtype(device: str):
    """bf16 on CUDA, and on CPUs where bf16 is measured faster; fp32 otherwise."""
    import torch

    if device.startswith("cuda") or (device == "cpu" and cpu_bf16_is_fast()):
        return torch.bfloat16
    return torch.float32


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of handing it back to the OS.

    A training step frees and reallocates the same activation buffers every step; with glibc's
    defaults many are returned to the kernel and page-faulted in again next step (measured: 5%
    of CPU training throughput on the default model). Process-wide; a no-op off glibc.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    ok = libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's maximum
    ok &= libc.mallopt(M_TRIM_THRESHOLD, 2**30)
    ok &= libc.mallopt(M_TOP_PAD, 64 * 2**20)
    return bool(ok)
