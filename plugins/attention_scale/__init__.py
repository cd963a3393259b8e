"""Attention scale: move the ``1/sqrt(d)`` of ``softmax(Q·Kᵀ·s + mask)`` onto Q.

Matches the two shapes the exporters write: eager attention (``MatMul(Q, Kᵀ)`` then ``Mul``/``Div`` by a constant)
and the SDPA decomposition (``MatMul(Q·√s, Kᵀ·√s)``, the scale split over both operands). Either becomes
``MatMul(Q·s, Kᵀ)``: the form TensorRT's fused multi-head-attention kernels expect, one Mul on a [B, H, S, d]
tensor instead of one on the [B, H, S, S] scores.

On the ``ort_contrib`` (CPU) flavor the scale goes one step further, into Q's projection weights and bias, when Q
is ``Transpose/Reshape(MatMul(x, W) + b)`` with constants only Q reads: no Mul remains at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from servicemaker.plugins import (Fusion, Match, Partial, consumers, detach, other_input, private, producer, scalar,
                                  split_constant)


def _scaled(tensor: Any, graph: Any) -> tuple[Any, float, Any] | None:
    """``tensor = Mul(t, c)`` with scalar c, read only by one node: (t, c, the Mul)."""
    node = producer(tensor)
    if node is None or node.op != "Mul" or len(consumers(tensor, graph)) != 1:
        return None
    split = split_constant(node)
    if split is None or split[1].size != 1:
        return None
    return split[0], float(split[1].ravel()[0]), node


def find(graph: Any) -> tuple[list[Match], list[Partial]]:
    matches: list[Match] = []
    partials: list[Partial] = []
    for softmax in list(graph.nodes):
        if softmax.op != "Softmax" or int(softmax.attrs.get("axis", -1)) not in (-1, 3):
            continue
        name = softmax.name or "Softmax"
        scores = softmax.inputs[0]
        pre = producer(scores)
        if pre is not None and pre.op == "Add":  # the attention mask
            scores = next((t for t in pre.inputs if producer(t) is not None
                           and producer(t).op in ("Mul", "Div", "MatMul")), None)
            pre = producer(scores) if scores is not None else None
        if pre is None:
            continue
        if pre.op in ("Mul", "Div"):
            mm_out = next((t for t in pre.inputs if producer(t) is not None and producer(t).op == "MatMul"), None)
            c = scalar(other_input(pre, mm_out)) if mm_out is not None else None
            if mm_out is None or c is None or (pre.op == "Div" and pre.inputs[0] is not mm_out):
                partials.append(Partial(name, f"the scores are scaled by a {pre.op} that is not a constant scalar"))
                continue
            if not private(mm_out, graph, [pre]):
                partials.append(Partial(name, "the unscaled scores are also read elsewhere"))
                continue
            scale = 1.0 / c if pre.op == "Div" else c
            mm = producer(mm_out)
            matches.append(Match([pre], {"matmul": mm, "q": mm.inputs[0], "k": mm.inputs[1], "scale": scale,
                                         "form": "eager"}))
        elif pre.op == "MatMul":
            q, k = _scaled(pre.inputs[0], graph), _scaled(pre.inputs[1], graph)
            if q is None or k is None:
                continue  # scale already on Q only, or no scale: nothing to move
            matches.append(Match([q[2], k[2]], {"matmul": pre, "q": q[0], "k": k[0], "scale": q[1] * k[1],
                                                "form": "sdpa"}))
    return matches, partials


def _projection(q: Any, graph: Any) -> tuple[Any, Any] | None:
    """Q = Transpose/Reshape(Add(MatMul(x, W), b)) with W, b constants only Q reads: (W constant, b constant)."""
    import onnx_graphsurgeon as gs

    t = q
    while producer(t) is not None and producer(t).op in ("Transpose", "Reshape") and len(consumers(t, graph)) == 1:
        t = producer(t).inputs[0]
    add = producer(t)
    if add is None or add.op != "Add" or len(consumers(t, graph)) != 1:
        return None
    for y, b in (add.inputs, add.inputs[::-1]):
        mm = producer(y)
        if isinstance(b, gs.Constant) and b.values.ndim == 1 and mm is not None and mm.op == "MatMul" \
                and isinstance(mm.inputs[1], gs.Constant) and len(consumers(y, graph)) == 1 \
                and len(mm.inputs[1].outputs) == 1 and len(b.outputs) == 1:
            return mm.inputs[1], b
    return None


def rewrite(graph: Any, match: Match, flavor: str) -> list[Any]:
    import onnx_graphsurgeon as gs

    v = match.values
    mm, scale = v["matmul"], np.float32(v["scale"])
    out = match.nodes[0].outputs[0] if v["form"] == "eager" else mm.outputs[0]
    detach(match)
    q = v["q"]
    nodes: list[Any] = []
    folded = _projection(q, graph) if flavor == "ort_contrib" else None
    if folded is not None:
        weight, bias = folded
        weight.values = (np.asarray(weight.values) * scale).astype(weight.values.dtype)
        bias.values = (np.asarray(bias.values) * scale).astype(bias.values.dtype)
    else:
        scaled = gs.Variable(f"{mm.name or 'MatMul'}/q_scaled", dtype=q.dtype, shape=q.shape)
        nodes.append(gs.Node("Mul", f"{mm.name or 'MatMul'}/ScaleQ", inputs=[q, gs.Constant(
            f"{mm.name or 'MatMul'}/scale", np.array(scale, dtype=np.float32))], outputs=[scaled]))
        q = scaled
    mm.inputs.clear()
    mm.inputs.extend([q, v["k"]])
    if v["form"] == "eager":
        mm.outputs.clear()
        mm.outputs.append(out)
    graph.nodes.extend(nodes)
    return nodes + [mm]


FUSION = Fusion("attention_scale", "1/sqrt(d) attention scale moved onto Q (into Q's weights on the CPU)",
                find, rewrite)
