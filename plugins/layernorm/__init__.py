"""LayerNorm: ``ReduceMean → Sub → Pow(2) → ReduceMean → Add(eps) → Sqrt → Div → Mul(gamma) → Add(beta)`` over the
last axis → one LayerNormalization node (opset 17).

That decomposition is what the TorchScript-based exporter writes below opset 17 (from 17 on, and with the dynamo
exporter, PyTorch already writes LayerNormalization, which the ``skip_layernorm`` plugin reads). ``x*x`` in place of
``Pow(x, 2)`` and a missing gamma or beta are accepted.

Emits LayerNormalization for every flavor: TensorRT has parsed it natively since 8.6 and ONNX Runtime runs it as a
fused kernel; TensorRT's plugin library has no stand-alone LayerNorm plugin to prefer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from servicemaker.plugins import (Fusion, Match, Partial, constant, consumers, detach, is_scalar, only_reader,
                                  other_input, private)


def _last_axis(node: Any, rank: int | None) -> bool:
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        axes = constant(node.inputs[1])
    if axes is None or int(node.attrs.get("keepdims", 1)) != 1:
        return False
    axes = [int(a) for a in np.ravel(axes)]
    return len(axes) == 1 and (axes[0] == -1 or (rank is not None and axes[0] == rank - 1))


def _rank(tensor: Any) -> int | None:
    return len(tensor.shape) if tensor.shape is not None else None


def find(graph: Any) -> tuple[list[Match], list[Partial]]:
    matches: list[Match] = []
    partials: list[Partial] = []
    for mean in list(graph.nodes):
        if mean.op != "ReduceMean":
            continue
        x = mean.inputs[0]
        sub = only_reader(mean.outputs[0], graph, "Sub")
        if sub is None or sub.inputs[0] is not x or sub.inputs[1] is not mean.outputs[0]:
            continue  # not the first ReduceMean of a LayerNorm (the variance one is reached from here)
        name = mean.name or "ReduceMean"
        d = sub.outputs[0]
        readers = consumers(d, graph)
        square = next((n for n in readers if n is not None and (
            (n.op == "Pow" and n.inputs[0] is d and is_scalar(n.inputs[1], 2.0))
            or (n.op == "Mul" and n.inputs[0] is d and n.inputs[1] is d))), None)
        div = next((n for n in readers if n is not None and n.op == "Div" and n.inputs[0] is d), None)
        if square is None or div is None or len(readers) != 2:
            partials.append(Partial(name, "x - mean is not only squared and divided"))
            continue
        var = only_reader(square.outputs[0], graph, "ReduceMean")
        add_eps = only_reader(var.outputs[0], graph, "Add") if var is not None else None
        eps = other_input(add_eps, var.outputs[0]) if add_eps is not None else None
        sqrt = only_reader(add_eps.outputs[0], graph, "Sqrt") if add_eps is not None else None
        if var is None or sqrt is None or constant(eps) is None or div.inputs[1] is not sqrt.outputs[0]:
            partials.append(Partial(name, "no mean of squares + epsilon under a Sqrt dividing x - mean"))
            continue
        if not (_last_axis(mean, _rank(x)) and _last_axis(var, _rank(x))):
            partials.append(Partial(name, "the ReduceMeans are not over the last axis only, with keepdims"))
            continue
        nodes = [mean, sub, square, var, add_eps, sqrt, div]
        hidden = None
        gamma = beta = None
        mul = only_reader(div.outputs[0], graph, "Mul")
        if mul is not None and constant(other_input(mul, div.outputs[0])) is not None:
            gamma = constant(other_input(mul, div.outputs[0]))
            nodes.append(mul)
        add = only_reader(nodes[-1].outputs[0], graph, "Add")
        if add is not None and constant(other_input(add, nodes[-1].outputs[0])) is not None:
            beta = constant(other_input(add, nodes[-1].outputs[0]))
            nodes.append(add)
        for value in (gamma, beta):
            if value is not None and value.size > 1:
                hidden = value.shape[-1] if value.size == value.shape[-1] else -1
        if hidden is None and x.shape is not None and isinstance(x.shape[-1], int):
            hidden = x.shape[-1]
        if hidden is None or hidden < 0:
            partials.append(Partial(name, "gamma/beta are not per-channel, or the normalized size is unknown"))
            continue
        inner = [t for n in nodes[:-1] for t in n.outputs]
        if not all(private(t, graph, nodes) for t in inner):
            partials.append(Partial(name, "an intermediate LayerNorm value is also read elsewhere"))
            continue
        gamma = np.ones(hidden, np.float32) if gamma is None else np.broadcast_to(gamma, (hidden,)).astype(np.float32)
        beta = np.zeros(hidden, np.float32) if beta is None else np.broadcast_to(beta, (hidden,)).astype(np.float32)
        matches.append(Match(nodes, {"x": x, "gamma": gamma, "beta": beta, "epsilon": float(np.ravel(constant(eps))[0])}))
    return matches, partials


def rewrite(graph: Any, match: Match, flavor: str) -> list[Any]:
    import onnx_graphsurgeon as gs

    out = match.nodes[-1].outputs[0]
    name = f"{match.where}/LayerNorm"
    detach(match)
    node = gs.Node("LayerNormalization", name, attrs={"axis": -1, "epsilon": match.values["epsilon"]},
                   inputs=[match.values["x"], gs.Constant(f"{name}/gamma", match.values["gamma"]),
                           gs.Constant(f"{name}/beta", match.values["beta"])], outputs=[out])
    graph.nodes.append(node)
    return [node]


FUSION = Fusion("layernorm", "decomposed LayerNorm → LayerNormalization (opset 17)", find, rewrite, needs_opset=17)
