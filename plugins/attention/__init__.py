"""Multi-head self-attention → ONNX Runtime's ``MultiHeadAttention`` contrib op (the ``ort_contrib`` flavor, and
the ``ort`` flavor the CPU targets take by default).

Matches what the PyTorch exporters write for ``softmax(Q·Kᵀ·s + mask)·V`` over heads, eager and SDPA alike, once the
``attention_scale`` plugin has run (the scale is a constant Mul/Div on the scores, on Q, on both Q and K, or already
in Q's projection weights):

    Q = Transpose[0,2,1,3](Reshape(q, [B, S, N, d]))          K = Transpose[0,2,3,1](Reshape(k, ...))
                                                               (or Transpose[0,1,3,2](Transpose[0,2,1,3](...)))
    V = Transpose[0,2,1,3](Reshape(v, ...))
    out = Reshape(Transpose[0,2,1,3](MatMul(Softmax(MatMul(Q, K)·s + mask), V)), [B, S, N·d])

with q, k, v computed from one sequence (self-attention). The whole subgraph becomes one
``MultiHeadAttention(q, k, v, attention_bias)`` node (``num_heads`` N, ``scale`` s); the additive mask, whatever
subgraph the exporter wrote for it (HF's ``(1 - mask)·min`` or its ``Where``/``Expand`` form), is kept as it is and
broadcast to ``[B, 1, S, S]`` once per mask tensor. The Q/K/V projections stay MatMuls, so INT8 quantizes them as
before; the attention itself runs in FP32 inside the op.

Near misses are reported and left alone: a scores or probabilities tensor read elsewhere, a non-constant scale,
Q/K/V of different sequences (cross-attention), a head layout the Reshape/Transpose pattern does not show.
The ``onnx`` and ``trt_plugin`` flavors keep the standard ops: TensorRT fuses them into its own attention kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from servicemaker.plugins import (MS_DOMAIN, Fusion, Match, Partial, consumers, constant, detach, only_reader,
                                  other_input, producer, split_constant)

QUERY_PERM = [0, 2, 1, 3]


def _perm(node: Any) -> list[int]:
    return [int(p) for p in node.attrs.get("perm", [])]


def _single(tensor: Any, graph: Any) -> bool:
    return len(consumers(tensor, graph)) == 1


def _heads(t: Any, graph: Any, steps: tuple[Any, ...]) -> tuple[Any, Any, list[Any]] | None:
    """Walk back from ``t`` through single-reader tensors: ``steps`` are Transpose perms (lists) and ``"Reshape"``
    marks, in that order, then the Reshape that split the heads: (its input, that Reshape, the nodes)."""
    nodes, keep, last = [], False, None
    for step in steps + ("Reshape",):
        node = producer(t)
        readers = consumers(t, graph)
        shapes = [r for r in readers if r is not None and r.op == "Shape"]
        if node is None or len(readers) - len(shapes) != 1:
            return None
        if step == "Reshape" and node.op != "Reshape" or step != "Reshape" and (node.op != "Transpose"
                                                                               or _perm(node) != step):
            return None
        keep = keep or bool(shapes)  # a tensor whose shape is read elsewhere stays, and so does all before it
        if not keep:
            nodes.append(node)
        t, last = node.inputs[0], node
    return t, last, nodes


#: how the exporters write Kᵀ per head: one transpose; two; or (dynamo's SDPA) through a [B·N, S, d] reshape
KEY_PATHS = (([0, 2, 3, 1],), ([0, 1, 3, 2], QUERY_PERM), ("Reshape", [0, 2, 1], "Reshape", QUERY_PERM))


def _head_size(reshape: Any) -> int | None:
    """The last entry of the Reshape's target shape: a constant, or the last input of a Concat of constants."""
    shape = constant(reshape.inputs[1])
    if shape is None:
        concat = producer(reshape.inputs[1])
        if concat is None or concat.op != "Concat" or not concat.inputs:
            return None
        shape = constant(concat.inputs[-1])
    if shape is None or shape.size < 1 or int(shape.ravel()[-1]) <= 0:
        return None
    return int(shape.ravel()[-1])


def _source(t: Any, graph: Any) -> tuple[Any, int, tuple[Any, Any, np.ndarray] | None] | None:
    """``t = [Add(]MatMul(x, W)[, b)]`` with constant W: (x, W's output width, and where the Add of a constant 1-D
    bias is read only by the head split: (the Add, the MatMul's output, b))."""
    node, add = producer(t), None
    if node is not None and node.op == "Add":
        add = node
        node = next((producer(i) for i in node.inputs if producer(i) is not None and producer(i).op == "MatMul"),
                    None)
    if node is None or node.op != "MatMul":
        return None
    weight = constant(node.inputs[1])
    if weight is None or weight.ndim != 2:
        return None
    bias = None
    if add is not None and _single(t, graph):
        b = constant(other_input(add, node.outputs[0]))
        if b is not None and b.shape == (weight.shape[1],) and _single(node.outputs[0], graph):
            bias = (add, node.outputs[0], b.astype(np.float32))
    return node.inputs[0], int(weight.shape[1]), bias


def _unscaled(t: Any, graph: Any) -> tuple[Any, float, Any | None]:
    """``t = Mul(x, c)`` / ``Div(x, c)`` with scalar c read once: (x, the factor, the node); else (t, 1, None)."""
    node = producer(t)
    if node is not None and node.op in ("Mul", "Div") and _single(t, graph):
        split = split_constant(node)
        if split is not None and split[1].size == 1 and (node.op == "Mul" or node.inputs[0] is split[0]):
            c = float(split[1].ravel()[0])
            if c != 0.0:
                return split[0], (c if node.op == "Mul" else 1.0 / c), node
    return t, 1.0, None


def _reader_and_shapes(tensor: Any, graph: Any, op: str) -> tuple[list[Any], Any | None]:
    """The one ``op`` node reading ``tensor`` besides plain Shape nodes (the exporter's shape arithmetic): (those
    Shape nodes, the node), or ([], None)."""
    readers = consumers(tensor, graph)
    shapes = [r for r in readers if r is not None and r.op == "Shape" and not r.attrs.get("start")
              and r.attrs.get("end") is None]
    rest = [r for r in readers if all(r is not x for x in shapes)]
    if len(rest) != 1 or rest[0] is None or rest[0].op != op:
        return [], None
    return shapes, rest[0]


def _nan_guard(probs: Any, graph: Any) -> list[Any] | None:
    """``Where(IsNaN(probs), 0, probs)`` as the only readers of ``probs``: [IsNaN, Where]."""
    readers = consumers(probs, graph)
    isnan = next((r for r in readers if r is not None and r.op == "IsNaN"), None)
    where = next((r for r in readers if r is not None and r.op == "Where"), None)
    if len(readers) != 2 or isnan is None or where is None or len(where.inputs) != 3:
        return None
    zero = constant(where.inputs[1])
    if where.inputs[0] is not isnan.outputs[0] or where.inputs[2] is not probs or zero is None or np.any(zero != 0) \
            or not _single(isnan.outputs[0], graph):
        return None
    return [isnan, where]


def _match(softmax: Any, graph: Any) -> Match | str | None:
    """One attention around ``softmax``: a Match, a reason it only partly matches, or None (not attention)."""
    probs, nodes = softmax.outputs[0], [softmax]
    guard = _nan_guard(probs, graph)
    if guard is not None:  # dynamo's SDPA: Where(IsNaN(p), 0, p); fully masked rows only, which the mask never makes
        probs = guard[-1].outputs[0]
        nodes += guard
    context_mm = only_reader(probs, graph, "MatMul")
    if context_mm is None or context_mm.inputs[0] is not probs:
        return None
    nodes.append(context_mm)
    scores, mask = softmax.inputs[0], None
    add = producer(scores)
    if add is not None and add.op == "Add" and _single(scores, graph):
        scored = [t for t in add.inputs if producer(t) is not None and producer(t).op in ("MatMul", "Mul", "Div")]
        if len(scored) != 1:
            return "the scores' Add has no single MatMul operand"
        scores, mask = scored[0], next(t for t in add.inputs if t is not scored[0])
        nodes.append(add)
    if not _single(scores, graph):
        return "the attention scores are also read elsewhere"
    scores, scale, node = _unscaled(scores, graph)
    nodes += [node] if node is not None else []
    mm = producer(scores)
    if mm is None or mm.op != "MatMul":
        return "the scores are not a MatMul scaled by a constant"
    nodes.append(mm)
    q, q_scale, q_node = _unscaled(mm.inputs[0], graph)
    k, k_scale, k_node = _unscaled(mm.inputs[1], graph)
    scale *= q_scale * k_scale
    nodes += [n for n in (q_node, k_node) if n is not None]
    q_heads = _heads(q, graph, (QUERY_PERM,))
    k_heads = next((h for h in (_heads(k, graph, path) for path in KEY_PATHS) if h is not None), None)
    v_heads = _heads(context_mm.inputs[1], graph, (QUERY_PERM,))
    if q_heads is None or k_heads is None or v_heads is None:
        return "Q, K or V is not a [B, S, N, d] Reshape transposed to heads (or is read elsewhere)"
    ctx_shapes, out_t = _reader_and_shapes(context_mm.outputs[0], graph, "Transpose")
    if out_t is None:  # torchscript's SDPA reshapes the context back to the query's [B, N, S, d] first
        ctx_shapes, restore = _reader_and_shapes(context_mm.outputs[0], graph, "Reshape")
        more, out_t = _reader_and_shapes(restore.outputs[0], graph, "Transpose") if restore is not None else ([], None)
        ctx_shapes += more
        nodes += [restore] if restore is not None else []
    t_shapes, out_r = _reader_and_shapes(out_t.outputs[0], graph, "Reshape") \
        if out_t is not None and _perm(out_t) == QUERY_PERM else ([], None)
    if out_r is None:
        return "the context is not transposed back and reshaped to [B, S, hidden]"
    nodes += q_heads[2] + k_heads[2] + v_heads[2] + [out_t, out_r]
    sources = [_source(x, graph) for x in (q_heads[0], k_heads[0], v_heads[0])]
    if any(s is None for s in sources) or len({id(s[0]) for s in sources}) != 1:
        return "Q, K and V are not projections of one sequence (cross-attention is left alone)"
    sizes = {_head_size(r) for r in (q_heads[1], k_heads[1], v_heads[1])}
    hidden = sources[0][1]
    if len(sizes) != 1 or None in sizes or hidden % next(iter(sizes)) or any(s[1] != hidden for s in sources):
        return "the head size cannot be read from the graph's Reshapes"
    if mask is not None and mask.dtype is not None and np.dtype(mask.dtype) != np.float32:
        return f"the mask added to the scores is {np.dtype(mask.dtype)}, not float32"
    head = next(iter(sizes))
    q, k, v, bias = q_heads[0], k_heads[0], v_heads[0], None
    if all(s[2] is not None for s in sources):  # the projections' biases go into the op (added per head there)
        nodes += [s[2][0] for s in sources]
        q, k, v = (s[2][1] for s in sources)
        bias = np.concatenate([s[2][2] for s in sources])
    return Match(nodes, {"q": q, "k": k, "v": v, "out": out_r.outputs[0], "qkv_bias": bias,
                         "shapes": {"ctx": ctx_shapes, "out_t": t_shapes}, "head_size": head,
                         "mask": mask, "heads": hidden // head, "scale": scale, "name": mm.name or "attention"})


def find(graph: Any) -> tuple[list[Match], list[Partial]]:
    matches: list[Match] = []
    partials: list[Partial] = []
    masks: dict[int, dict[str, Any]] = {}
    for softmax in list(graph.nodes):
        if softmax.op != "Softmax" or int(softmax.attrs.get("axis", -1)) not in (-1, 3):
            continue
        found = _match(softmax, graph)
        if isinstance(found, str):
            partials.append(Partial(softmax.name or "Softmax", found))
        elif found is not None:
            mask = found.values["mask"]
            found.values["bias"] = masks.setdefault(id(mask), {}) if mask is not None else None
            matches.append(found)
    return matches, partials


def _bias(graph: Any, v: dict[str, Any]) -> Any:
    """The additive mask broadcast to [B, 1, S, S] (MultiHeadAttention's attention_bias): built once per mask."""
    import onnx_graphsurgeon as gs

    shared = v["bias"]
    if "tensor" not in shared:
        name = f"{v['name']}/attention_bias"
        shape = gs.Variable(f"{name}/q_shape", dtype=np.int64, shape=[3])
        seq = gs.Variable(f"{name}/seq", dtype=np.int64, shape=[1])
        target = gs.Variable(f"{name}/shape", dtype=np.int64, shape=[4])
        out = gs.Variable(name, dtype=np.float32)
        graph.nodes.extend([
            gs.Node("Shape", f"{name}/Shape", inputs=[v["q"]], outputs=[shape]),
            gs.Node("Gather", f"{name}/Gather", inputs=[shape, gs.Constant(f"{name}/axis1", np.array([1], np.int64))],
                    outputs=[seq], attrs={"axis": 0}),
            gs.Node("Concat", f"{name}/Concat", inputs=[gs.Constant(f"{name}/ones", np.array([1, 1], np.int64)), seq,
                                                        seq], outputs=[target], attrs={"axis": 0}),
            gs.Node("Expand", f"{name}/Expand", inputs=[v["mask"], target], outputs=[out])])
        shared["tensor"] = out
    return shared["tensor"]


def _reshape_readers(graph: Any, v: dict[str, Any]) -> None:
    """The Shape nodes that read the removed per-head context ([B, N, S, d]) or its transpose ([B, S, N, d]) now
    compute the same shape from the attention's output [B, S, N·d]."""
    import onnx_graphsurgeon as gs

    dims = {"b": [0], "s": [1]}
    for where, order in (("ctx", "bnsd"), ("out_t", "bsnd")):
        for shape in v["shapes"][where]:
            name = f"{v['name']}/{where}_shape"
            out = shape.outputs[0]
            shape.inputs.clear()
            shape.outputs.clear()
            full = gs.Variable(f"{name}/full", dtype=np.int64, shape=[3])
            parts = {"n": gs.Constant(f"{name}/n", np.array([v["heads"]], np.int64)),
                     "d": gs.Constant(f"{name}/d", np.array([v["head_size"]], np.int64))}
            nodes = [gs.Node("Shape", f"{name}/Shape", inputs=[v["out"]], outputs=[full])]
            for key, index in dims.items():
                parts[key] = gs.Variable(f"{name}/{key}", dtype=np.int64, shape=[1])
                nodes.append(gs.Node("Gather", f"{name}/Gather_{key}", inputs=[full, gs.Constant(
                    f"{name}/index_{key}", np.array(index, np.int64))], outputs=[parts[key]], attrs={"axis": 0}))
            nodes.append(gs.Node("Concat", f"{name}/Concat", inputs=[parts[c] for c in order], outputs=[out],
                                 attrs={"axis": 0}))
            graph.nodes.extend(nodes)


def rewrite(graph: Any, match: Match, flavor: str) -> list[Any]:
    import onnx_graphsurgeon as gs

    if flavor != "ort_contrib":
        return []  # standard ops: TensorRT (and ORT's own optimizer) fuse them themselves
    v = match.values
    bias = _bias(graph, v) if v["mask"] is not None else None
    detach(match)
    empty = gs.Variable.empty
    inputs = [v["q"], v["k"], v["v"]]
    if v["qkv_bias"] is not None:
        inputs.append(gs.Constant(f"{v['name']}/qkv_bias", v["qkv_bias"]))
    if bias is not None:
        inputs += [empty()] * (4 - len(inputs)) + [empty(), bias]
    node = gs.Node("MultiHeadAttention", f"{v['name']}/MultiHeadAttention", inputs=inputs, outputs=[v["out"]],
                   attrs={"num_heads": int(v["heads"]), "scale": float(v["scale"])}, domain=MS_DOMAIN)
    graph.nodes.append(node)
    _reshape_readers(graph, v)
    return [node]


FUSION = Fusion("attention", "multi-head self-attention → ONNX Runtime MultiHeadAttention (CPU targets)",
                find, rewrite)
