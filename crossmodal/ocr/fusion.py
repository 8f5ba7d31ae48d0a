"""Exact rewrites of the PP-OCRv4 graphs as exported (paddle2onnx), applied in memory when a session is made.

The export leaves PP-LCNetV3's activations unfused: after each convolution a learnable affine (scalar scale and
bias), hard-swish spelt as Add, Clip, Mul and Div, and a second affine. Each is a pass over the whole activation
tensor, and ONNX Runtime fuses none of them (the scale comes before the tensor in each Mul, and opset 12 has no
HardSwish), so on a CPU these memory-bound passes took more time than the convolutions. Rewritten:

- a convolution followed by a scalar Mul and Add takes them into its weights and bias;
- hard-swish becomes one HardSwish node (the graph is converted to opset 14 by onnx's version converter);
- a scalar Mul and Add in front of a 1x1 convolution without padding go into that convolution.

All three are algebraic identities; only float rounding differs (tests/test_ocr.py compares the two graphs).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

HARD_SWISH_OPSET = 14


def fused_model_bytes(path: str) -> bytes:
    """The model at ``path`` with the rewrites above, serialised for onnxruntime.InferenceSession."""
    import onnx

    model = onnx.load(path)
    graph = _Graph(model)
    graph.fold_affine_into_convolutions()
    graph.fold_affine_into_following_pointwise()
    if graph.hard_swish_patterns():
        model = _with_opset(model, HARD_SWISH_OPSET)
        graph = _Graph(model)
        graph.replace_hard_swish()
    graph.drop_unused()
    return model.SerializeToString()


def _with_opset(model, version: int):
    from onnx import version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), version)
    return model if current >= version else version_converter.convert_version(model, version)


class _Graph:
    """Producers, consumers and constant values of one ONNX graph, with the rewrites that use them."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.model, self.graph = model, model.graph
        self.constants: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.outputs = {o.name for o in self.graph.output}
        self._index()

    def _index(self):
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for node in self.graph.node:
            for name in node.input:
                self.consumers[name].append(node)

    def _sole_consumer(self, tensor: str, op_type: str):
        users = self.consumers.get(tensor, [])
        if len(users) == 1 and users[0].op_type == op_type and tensor not in self.outputs:
            return users[0]
        return None

    def _scalar_operand(self, node, tensor: str) -> float | None:
        """The other operand of a binary node when it is a constant holding one value."""
        other = [name for name in node.input if name != tensor]
        if len(other) != 1 or other[0] not in self.constants or self.constants[other[0]].size != 1:
            return None
        return float(self.constants[other[0]].reshape(()))

    def _set_initializer(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        fresh = f"{name}.fused"
        while fresh in self.constants:
            fresh += "_"
        self.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), fresh))
        self.constants[fresh] = value
        return fresh

    def _remove(self, nodes) -> None:
        doomed = {id(n) for n in nodes}
        for position in reversed([k for k, n in enumerate(self.graph.node) if id(n) in doomed]):
            del self.graph.node[position]
        self._index()

    def _affine_after(self, tensor: str):
        """(scale, bias, nodes, output) of a scalar Mul then optional scalar Add reading ``tensor``, or None."""
        mul = self._sole_consumer(tensor, "Mul")
        scale = self._scalar_operand(mul, tensor) if mul is not None else None
        if scale is None:
            return None
        add = self._sole_consumer(mul.output[0], "Add")
        bias = self._scalar_operand(add, mul.output[0]) if add is not None else None
        if bias is None:
            return scale, 0.0, [mul], mul.output[0]
        return scale, bias, [mul, add], add.output[0]

    def fold_affine_into_convolutions(self) -> None:
        """conv(x) * s + b  ->  conv'(x) with weights W*s and bias B*s + b."""
        while self._fold_one_affine_into_convolution():
            pass

    def _fold_one_affine_into_convolution(self) -> bool:
        # One rewrite per scan: the scan starts again on the fresh node list and index.
        for conv in [n for n in self.graph.node if n.op_type == "Conv"]:
            weight_name = conv.input[1]
            if weight_name not in self.constants or len(self.consumers[weight_name]) != 1:
                continue
            affine = self._affine_after(conv.output[0])
            if affine is None:
                continue
            scale, bias, nodes, output = affine
            weight = self.constants[weight_name]
            old_bias = self.constants.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
            if len(conv.input) > 2 and conv.input[2] and old_bias is None:
                continue
            new_bias = (old_bias if old_bias is not None else np.zeros(weight.shape[0], np.float32)) * scale + bias
            conv.input[1] = self._set_initializer(weight_name, weight * scale)
            bias_name = self._set_initializer(conv.input[2] if len(conv.input) > 2 else f"{weight_name}.bias", new_bias)
            if len(conv.input) > 2:
                conv.input[2] = bias_name
            else:
                conv.input.append(bias_name)
            conv.output[0] = output
            self._remove(nodes)
            return True
        return False

    def fold_affine_into_following_pointwise(self) -> None:
        """conv1x1(x * s + b)  ->  conv1x1'(x) with weights W*s and bias B + b * sum(W over inputs), when the
        convolution has no padding (so no border sees the zeros that would otherwise stand for b)."""
        while self._fold_one_affine_into_pointwise():
            pass

    def _fold_one_affine_into_pointwise(self) -> bool:
        for conv in [n for n in self.graph.node if n.op_type == "Conv"]:
            weight_name = conv.input[1]
            weight = self.constants.get(weight_name)
            if weight is None or weight.shape[2:] != (1, 1) or len(self.consumers[weight_name]) != 1:
                continue
            attributes = {a.name: a for a in conv.attribute}
            if any(v != 0 for v in getattr(attributes.get("pads"), "ints", [])) or \
                    getattr(attributes.get("auto_pad"), "s", b"NOTSET") not in (b"NOTSET", b"VALID") or \
                    getattr(attributes.get("group"), "i", 1) != 1:
                continue
            add = self.producer.get(conv.input[0])
            source, nodes, bias = conv.input[0], [], 0.0
            if add is not None and add.op_type == "Add" and len(self.consumers[add.output[0]]) == 1:
                mul_out = [name for name in add.input if name in self.producer and self.producer[name].op_type == "Mul"]
                if mul_out and self._scalar_operand(add, mul_out[0]) is not None:
                    bias, nodes, source = self._scalar_operand(add, mul_out[0]), [add], mul_out[0]
            mul = self.producer.get(source)
            if mul is None or mul.op_type != "Mul" or len(self.consumers[mul.output[0]]) != 1:
                continue
            operands = [name for name in mul.input if name not in self.constants]
            if len(operands) != 1 or self._scalar_operand(mul, operands[0]) is None:
                continue
            scale = self._scalar_operand(mul, operands[0])
            old_bias = self.constants.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
            if len(conv.input) > 2 and conv.input[2] and old_bias is None:
                continue
            base = old_bias if old_bias is not None else np.zeros(weight.shape[0], np.float32)
            new_bias = base + bias * weight.sum(axis=(1, 2, 3))
            conv.input[0] = operands[0]
            conv.input[1] = self._set_initializer(weight_name, weight * scale)
            bias_name = self._set_initializer(f"{weight_name}.bias", new_bias)
            if len(conv.input) > 2:
                conv.input[2] = bias_name
            else:
                conv.input.append(bias_name)
            self._remove([mul, *nodes])
            return True
        return False

    def hard_swish_patterns(self) -> list[tuple]:
        """(x, [Add, Clip, Mul, Div]) for each x * clip(x + 3, 0, 6) / 6 in the graph."""
        found = []
        for add in [n for n in self.graph.node if n.op_type == "Add"]:
            tensors = [name for name in add.input if name not in self.constants]
            if len(tensors) != 1 or self._scalar_operand(add, tensors[0]) != 3.0:
                continue
            x = tensors[0]
            clip = self._sole_consumer(add.output[0], "Clip")
            bounds = [self.constants[n].item() if n in self.constants and self.constants[n].size == 1 else None
                      for n in clip.input[1:3]] if clip is not None else []
            if bounds != [0.0, 6.0]:
                continue
            mul = self._sole_consumer(clip.output[0], "Mul")
            if mul is None or set(mul.input) != {x, clip.output[0]}:
                continue
            div = self._sole_consumer(mul.output[0], "Div")
            if div is None or div.input[0] != mul.output[0] or self._scalar_operand(div, mul.output[0]) != 6.0:
                continue
            found.append((x, [add, clip, mul, div]))
        return found

    def drop_unused(self) -> None:
        """Constants and initializers no node reads any more (the folded scales and biases)."""
        while True:
            read = {name for node in self.graph.node for name in node.input} | self.outputs
            dead = [n for n in self.graph.node if n.op_type == "Constant" and n.output[0] not in read]
            if not dead:
                break
            self._remove(dead)
        read = {name for node in self.graph.node for name in node.input} | self.outputs
        keep = [i for i in self.graph.initializer if i.name in read]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)

    def replace_hard_swish(self) -> None:
        from onnx import helper

        while patterns := self.hard_swish_patterns():
            x, nodes = patterns[0]
            position = list(self.graph.node).index(nodes[0])
            self.graph.node.insert(position, helper.make_node("HardSwish", [x], [nodes[-1].output[0]],
                                                              name=f"{nodes[-1].name or x}.hard_swish"))
            self._remove(nodes)
