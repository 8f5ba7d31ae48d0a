"""What the int8 tests share: the int8 weights a graph holds, which of ONNX Runtime's int8 branches this CPU
takes (crossmodal/encoders/int8.py), and the smallest graph that shows the difference."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def int8_weight_range(path: Path) -> tuple[int, int, int]:
    """(how many int8 tensors, their smallest value, their largest) in an ONNX graph: the quantised weights and
    their zero points (all 0 for symmetric int8, so they change neither extreme)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path))
    weights = [numpy_helper.to_array(t) for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    if not weights:
        return 0, 0, 0
    return len(weights), int(min(w.min() for w in weights)), int(max(w.max() for w in weights))


def cpu_branch() -> str:
    """Which int8 branch this CPU takes, in words, with the flags that decide it (for the test's report)."""
    from crossmodal.encoders.int8 import VNNI_FLAGS, cpu_flags, cpu_model, u8s8_may_saturate

    flags = cpu_flags()
    seen = sorted(f for f in flags if f in VNNI_FLAGS or f.startswith(("amx", "avx512f", "avx2")))
    kernel = "u8s8 pairs summed in int16 (vpmaddubsw, no VNNI)" if u8s8_may_saturate() else \
        "u8s8 summed in int32 (VNNI) or not x86"
    return f"{cpu_model()} [{' '.join(seen) or 'no flags read'}]: {kernel}"


def worst_case_matmul(tmp: Path, weight: int, inner: int = 64) -> tuple[Path, np.ndarray, np.ndarray]:
    """A MatMulInteger of uint8 activations at 255 by int8 weights at ``weight`` (the extreme of a 7- or 8-bit
    range): the graph, its input, and the exact int32 product."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    signs = rng.choice(np.array([-1, 1], dtype=np.int8), size=(inner, 16))
    signs[:, 0] = 1  # one column of all-positive products: the pair sums are at their largest there
    weights = (signs * weight).astype(np.int8)
    activations = np.full((4, inner), 255, dtype=np.uint8)
    node = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
    graph = helper.make_graph([node], "worst_case", [helper.make_tensor_value_info("a", TensorProto.UINT8, [4, inner])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [4, 16])],
                              [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp / f"worst-case-{weight}.onnx"
    onnx.save(model, str(path))
    return path, activations, activations.astype(np.int64) @ weights.astype(np.int64)
