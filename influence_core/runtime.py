"""The CPU this process runs on: its features (cpu_has_bf16_units, which picks the precision of
the big products), and process-wide settings that the CLI and the app apply once at start
(tune_runtime; tests do not need them: they change speed, never results)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit


@functools.lru_cache(maxsize=1)
def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (Linux /proc/cpuinfo flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def tune_runtime() -> dict[str, bool]:
    """Flush denormal floats to zero, and keep freed memory in the process. Returns what took.

    Denormals: tiny gradients and eigenvector entries otherwise make CPU matrix products
    several times slower (an EK-FAC IHVP of 50 MNIST queries: 5.1 s -> 0.6 s).
    Memory: glibc serves every allocation over 128 KB-32 MB with a fresh mmap and returns it
    on free, so each batch's activations (mnist/cnn conv1: 11 MB per batch of 128) are
    page-faulted and zeroed by the kernel again; that was half the time of ReLU's backward,
    and of max-pooling's, in the influence passes (profile: threshold_backward 8.8 -> 3.1 ms).
    mallopt keeps allocations up to 32 MB on the heap and the heap from being trimmed."""
    return {"flush_denormal": torch.set_flush_denormal(True), "keep_freed_memory": _keep_freed()}


@functools.lru_cache(maxsize=1)
def _keep_freed() -> bool:
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
                and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
