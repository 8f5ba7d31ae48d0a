"""int8 that holds on any x86-64 CPU: how exports are quantised, and how an int8 graph is opened.

ONNX Runtime's dynamic quantisation multiplies uint8 activations by int8 weights (u8s8). On an x86-64 CPU
without VNNI (AVX2 alone, or AVX-512 before Cascade Lake) its kernels add each pair of neighbouring products
with vpmaddubsw into a saturating int16: 255 x 127 x 2 = 64,770 is clipped to 32,767. With VNNI (avx512_vnni
or avx_vnni; AMX CPUs have both) vpdpbusd adds them in int32 and nothing saturates. The same graph therefore
agreed with fp32 at mean cosine 0.9997 on one CPU and 0.996 on another (docs/benchmarks.md, *int8 on every
x86-64 CPU*), and the agreement check turned int8 into fp32 on the second.

- What `python -m crossmodal export --int8` writes may run on any CPU, so its weights are 7-bit (reduce_range:
  |w| <= 64): 255 x 64 x 2 = 32,640 fits the int16, the fast kernels are exact on every x86-64 CPU, and the
  agreement measured on one CPU holds on all. The manifest records it (int8_weight_bits).
- The full build's cached towers are quantised on the machine that runs them: 8-bit where the CPU has VNNI
  (finer weights: on a ViT-B/32-size text tower 0.9994 against 0.9984 for 7-bit), 7-bit where it has not.
- A graph that may hold full 8-bit weights (a published export, or one of ours written before) is opened with
  ONNX Runtime's precise mode (session.x64quantprecision: weights turned to u8, the slower u8u8 kernels) on a
  CPU without VNNI. ONNX Runtime would apply that mode on a VNNI CPU too, at half the int8 speed for nothing,
  so it is asked for only where the CPU needs it.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

# Weights that hold on every x86-64 CPU, and the widest one that cannot saturate vpmaddubsw's int16
# (2 x 255 x 64 = 32,640 <= 32,767).
PORTABLE_WEIGHT_BITS = 7
U8S8_SAFE_WEIGHT = 64
# /proc/cpuinfo flags under which ONNX Runtime's u8s8 kernels add in int32 (vpdpbusd).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
X86_MACHINES = ("x86_64", "amd64", "i386", "i686")
PRECISE_U8S8 = "session.x64quantprecision"
CPUINFO = Path("/proc/cpuinfo")


def quantize_int8(path: Path, weight_bits: int = PORTABLE_WEIGHT_BITS, *, per_channel: bool = True,
                  weight_type: str = "QInt8") -> None:
    """ONNX Runtime's dynamic quantisation, in place: int8 weights per output channel in ``weight_bits`` (7:
    reduce_range, or 8), activations quantised per batch at run time. The keywords are the other candidates
    benchmarks/bench_int8.py measures."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    quantized = path.with_suffix(".int8.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to run shape pre-processing first is logged on the root logger
    try:
        quantize_dynamic(str(path), str(quantized), weight_type=QuantType[weight_type], per_channel=per_channel,
                         reduce_range=weight_bits <= PORTABLE_WEIGHT_BITS)
    finally:
        root.setLevel(level)
    os.replace(quantized, path)


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them; empty where /proc/cpuinfo cannot be read. (Under
    qemu-user it is the host's file, not the emulated CPU's.)"""
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def u8s8_may_saturate(flags: frozenset[str] | None = None) -> bool:
    """Whether ONNX Runtime's u8s8 kernels add pairs of products in int16 here: an x86-64 CPU without VNNI.
    Where the flags cannot be read (not Linux) it says yes: the precise mode then costs speed, never agreement."""
    if platform.machine().lower() not in X86_MACHINES:
        return False  # Arm's int8 kernels (sdot, udot, smmla) add in int32
    flags = cpu_flags() if flags is None else flags
    return not flags or not any(flag in flags for flag in VNNI_FLAGS)


def weight_bits_here() -> int:
    """The weights of int8 graphs quantised on and for this machine (the full build's cache): 8 bits where the
    u8s8 kernels add in int32, 7 where only that keeps them from saturating."""
    return PORTABLE_WEIGHT_BITS if u8s8_may_saturate() else 8


def fits_u8s8(description: dict) -> bool:
    """Whether an export's graphs are safe for the fast u8s8 kernels on any CPU: fp32, or int8 weights in
    7 bits as its manifest records. A published export says neither, so it counts as full 8-bit."""
    return description.get("quantized") is False or description.get("int8_weight_bits") == PORTABLE_WEIGHT_BITS


def session_options(threads: int, fits: bool):
    """ONNX Runtime's options for one of our sessions; ``fits``: fits_u8s8 of the graph's export."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not fits and u8s8_may_saturate():
        options.add_session_config_entry(PRECISE_U8S8, "1")
    return options


def uses_precise_mode(session) -> bool:
    """Whether an ONNX Runtime session was opened with the precise u8u8 mode (for notes and tests)."""
    try:
        return session.get_session_options().get_session_config_entry(PRECISE_U8S8) == "1"
    except RuntimeError:  # ONNX Runtime's answer for a key never set
        return False
