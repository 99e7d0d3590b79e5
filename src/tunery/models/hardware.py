"""What this machine computes fastest, measured rather than assumed.

CPUs differ wildly in bf16: without native support a bf16 matmul is many times slower than fp32
(AVX2 only: 0.3 vs 152 GFLOP/s), while CPUs with AVX512-BF16 or AMX run it several times faster
(measured on an AMD EPYC with avx512_bf16: 850 vs 212 GFLOP/s). The CPU's flags are read first:
without AVX512-BF16 or AMX nothing is timed (timing bf16 there took 5.6 s a run); with them, and
PyTorch and oneDNN free to use them, bf16 is fast, also untimed: a clock on a loaded machine once
said otherwise, and a resumed run then refused the precision its first part had trained in. Only
where the flags are unknown, or the environment holds a library below them (ATEN_CPU_CAPABILITY,
ONEDNN_MAX_CPU_ISA), a ~50 ms probe decides, starting small and stopping as soon as bf16 is clearly
slow. TUNERY_CPU_BF16=0/1 overrides it all.
"""

import functools
import os
import platform
import time

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 dot products
KIND_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # what a benchmark row reports


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux: /proc/cpuinfo; elsewhere empty: unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_kind() -> dict:
    """What a benchmark reports about the CPU: its model, the flags that matter, and the vector
    width PyTorch's own kernels run at (ATEN_CPU_CAPABILITY can hold it lower than the flags)."""
    import torch

    flags = cpu_flags()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    held = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
            if k in os.environ}
    return {"model": name, "cores": os.cpu_count(), "flags": [f for f in KIND_FLAGS if f in flags],
            "torch_capability": torch.backends.cpu.get_cpu_capability(), **({"held_by": held} if held else {})}


@functools.lru_cache(maxsize=1)
def cpu_bf16_is_fast() -> bool:
    forced = os.environ.get("TUNERY_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    flags = cpu_flags()
    if flags and not any(f in flags for f in BF16_FLAGS):
        return False  # no native bf16: emulated, hundreds of times slower; nothing to time
    import torch

    if flags and not _held_below_bf16(torch.backends.cpu.get_cpu_capability()):
        return True  # native bf16 that torch and oneDNN may use: decided without a clock, so a loaded
        # machine decides as an idle one does (a resumed run agrees with the run it resumes)

    def best(x, y, n: int = 5) -> float:
        x @ y
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - t0)
        return min(times)

    small = torch.randn(64, 256), torch.randn(256, 256)
    if best(*(t.bfloat16() for t in small), n=2) > 4 * best(*small, n=2):
        return False  # held below its bf16 instructions: clearly slow already on a small matmul
    a, b = torch.randn(256, 1024), torch.randn(1024, 1024)
    fp32 = best(a, b)
    bf16 = best(a.bfloat16(), b.bfloat16())
    return bf16 * 1.5 < fp32  # worth it only when clearly faster


ONEDNN_BELOW_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def _held_below_bf16(torch_capability: str) -> bool:
    """True where the environment holds PyTorch's kernels or oneDNN's below the CPU's bf16
    instructions (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA): then only a measurement can tell."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return not torch_capability.startswith("AVX512") or isa in ONEDNN_BELOW_BF16


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
