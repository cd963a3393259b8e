"""GELU: ``x*0.5*(1+erf(x/sqrt(2)))`` and ``0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x^3)))`` → one node.

Matches the factor orders both PyTorch exporters emit (``(x*a)*0.5``, ``x*(0.5*a)``, ``(0.5*x)*a``) and
``x/sqrt(2)`` or ``x*(1/sqrt(2))``. A bias Add right before (``MatMul + bias``) is absorbed on the ``ort_contrib``
flavor (BiasGelu / FastGelu with bias).

Emits: ``onnx`` Gelu (opset 20, ``approximate`` none|tanh); ``ort_contrib`` com.microsoft Gelu / BiasGelu /
FastGelu; ``trt_plugin`` CustomGeluPluginDynamic version 1 (TensorRT's plugin computes the tanh form for both).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from servicemaker.plugins import (MS_DOMAIN, TRT_DOMAIN, Fusion, Match, Partial, detach, is_scalar, only_reader,
                                  other_input, private, producer, product_tree, split_constant)

SQRT2 = math.sqrt(2.0)
TANH_SCALE = math.sqrt(2.0 / math.pi)


def _outer(a: Any, x: Any, graph: Any) -> list[Any] | None:
    """The Muls that multiply ``a`` (= 1 + erf/tanh) by x and 0.5, in either order or as ``(0.5*x)*a``."""
    tree = product_tree(a, graph)
    if tree is None:
        return None
    muls, factors = tree
    if len(factors) >= 2 and any(f is x and is_scalar(g, 0.5) for f, g in (factors[:2], factors[1::-1])):
        return muls[:2]
    half = producer(factors[0])
    if half is not None and half.op == "Mul" and len(half.inputs) == 2 \
            and any(f is x and is_scalar(g, 0.5) for f, g in (half.inputs, half.inputs[::-1])):
        return [half, muls[0]]
    return None


def _bias(x: Any, graph: Any, inside: list[Any]) -> tuple[Any, Any, np.ndarray] | None:
    """``x = Add(y, bias)`` with a 1-D constant bias that only the pattern reads: (add node, y, bias)."""
    add = producer(x)
    if add is None or add.op != "Add" or not private(x, graph, inside):
        return None
    split = split_constant(add)
    if split is None or split[1].ndim != 1:
        return None
    return add, split[0], split[1]


def find(graph: Any) -> tuple[list[Match], list[Partial]]:
    matches: list[Match] = []
    partials: list[Partial] = []
    for node in list(graph.nodes):
        if node.op not in ("Erf", "Tanh"):
            continue
        name = node.name or node.op
        pre = producer(node.inputs[0])
        x, chain, form = None, [], "none" if node.op == "Erf" else "tanh"
        if form == "none":
            if pre is not None and pre.op == "Div" and is_scalar(pre.inputs[1], SQRT2):
                x = pre.inputs[0]
            elif pre is not None and pre.op == "Mul":
                for a, b in (pre.inputs, pre.inputs[::-1]):
                    if is_scalar(b, 1 / SQRT2):
                        x = a
            chain = [pre]
        elif pre is not None and pre.op == "Mul":
            for inner, k in (pre.inputs, pre.inputs[::-1]):
                add = producer(inner)
                if not is_scalar(k, TANH_SCALE) or add is None or add.op != "Add":
                    continue
                for cand, cube_t in (add.inputs, add.inputs[::-1]):
                    cube = producer(cube_t)
                    if cube is None or cube.op != "Mul":
                        continue
                    pow_t = next((t for t in cube.inputs if not is_scalar(t, 0.044715)), None)
                    pow_node = producer(pow_t) if pow_t is not None else None
                    if len({id(t) for t in cube.inputs}) == 2 and any(is_scalar(t, 0.044715) for t in cube.inputs) \
                            and pow_node is not None and pow_node.op == "Pow" and pow_node.inputs[0] is cand \
                            and is_scalar(pow_node.inputs[1], 3.0):
                        x, chain = cand, [pow_node, cube, add, pre]
        if x is None:
            partials.append(Partial(name, f"{node.op} input is not the GELU {form} argument"))
            continue
        one = only_reader(node.outputs[0], graph, "Add")
        if one is None or not is_scalar(other_input(one, node.outputs[0]), 1.0):
            partials.append(Partial(name, f"{node.op} output is not only added to 1"))
            continue
        outer = _outer(one.outputs[0], x, graph)
        if outer is None:
            partials.append(Partial(name, f"1+{node.op.lower()} is not multiplied by x and 0.5"))
            continue
        nodes = chain + [node, one] + outer
        inner = [t for n in nodes[:-1] for t in n.outputs]
        if not all(private(t, graph, nodes) for t in inner):
            partials.append(Partial(name, "an intermediate GELU value is also read elsewhere"))
            continue
        values = {"x": x, "approximate": form}
        bias = _bias(x, graph, nodes)
        if bias is not None:
            values.update(bias_node=bias[0], y=bias[1], bias=bias[2])
        matches.append(Match(nodes, values))
    return matches, partials


def rewrite(graph: Any, match: Match, flavor: str) -> list[Any]:
    import onnx_graphsurgeon as gs

    out = match.nodes[-1].outputs[0]
    x, form = match.values["x"], match.values["approximate"]
    name = f"{match.where}/Gelu"
    if flavor == "onnx":
        detach(match)
        nodes = [gs.Node("Gelu", name, attrs={"approximate": form}, inputs=[x], outputs=[out])]
    elif flavor == "ort_contrib":
        bias_node = match.values.get("bias_node")
        op = "FastGelu" if form == "tanh" else ("BiasGelu" if bias_node is not None else "Gelu")
        inputs = [x]
        if bias_node is not None:
            inputs = [match.values["y"], gs.Constant(f"{name}/bias", match.values["bias"].astype(np.float32))]
            match = Match(match.nodes + [bias_node], match.values)
        detach(match)
        nodes = [gs.Node(op, name, inputs=inputs, outputs=[out], domain=MS_DOMAIN)]
    else:
        detach(match)
        nodes = [gs.Node("CustomGeluPluginDynamic", name, inputs=[x], outputs=[out], domain=TRT_DOMAIN,
                         attrs={"plugin_version": "1", "plugin_namespace": "", "type_id": 0})]
    graph.nodes.extend(nodes)
    return nodes


FUSION = Fusion("gelu", "erf and tanh GELU → Gelu / BiasGelu / FastGelu / CustomGeluPluginDynamic", find, rewrite,
                needs_opset=20)
