"""Helpers shared by the benchmarks: timing, data, the machine's description, result files."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__}


def cpu_steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests so far (/proc/stat's steal; 0 where there is none): read
    before and after a measurement, it says how much of a slow round was a noisy neighbour."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def matmul_peak_gflops(dtype=None, n: int = 2048, repeat: int = 10, device: str = "cpu", trials: int = 3) -> float:
    """Measured matrix-multiply throughput, the best of ``trials``: the hardware limit the other figures
    are compared with (a limit, so a noisy neighbour must not lower it)."""
    import torch

    dtype = dtype or torch.float32
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    torch.mm(a, b)
    best = 0.0
    for _ in range(trials):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeat):
            torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n ** 3 * repeat / (time.perf_counter() - started) / 1e9)
    return best


def timed(fn, *args, repeat: int = 1, **kwargs):
    """(result of the last call, seconds per call)."""
    started = time.perf_counter()
    for _ in range(repeat):
        result = fn(*args, **kwargs)
    return result, (time.perf_counter() - started) / repeat


def embedding_like(n: int, dim: int = 512, latent: int = 24, clusters: int = 200, seed: int = 0,
                   basis_seed: int | None = None) -> np.ndarray:
    """Unit vectors with low intrinsic dimension, as real embeddings have (uniform random 512-d
    vectors are the worst case for any graph index and unlike any model's output). ``basis_seed``: draw the
    cluster centres and the projection from it, so that chunks made with other ``seed``s share one space."""
    rng = np.random.default_rng(seed)
    if basis_seed is None:
        centres = rng.normal(size=(clusters, latent))
        z = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, latent))
        x = z @ rng.normal(size=(latent, dim)) + 0.05 * rng.normal(size=(n, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    basis = np.random.default_rng(basis_seed)
    centres, projection = basis.normal(size=(clusters, latent)), basis.normal(size=(latent, dim))
    z = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, latent))
    x = z @ projection + 0.05 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2))
    return path


def table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if v < 100 else f"{v:.0f}"
    return "" if v is None else str(v)
