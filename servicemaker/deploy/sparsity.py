"""2:4 structured sparsity: in every group of 4 consecutive weights along the input (reduction) dimension, keep
the 2 of largest magnitude and zero the other 2 — the pattern NVIDIA's sparse tensor cores skip. TensorRT then
picks sparse kernels when built with ``SPARSE_WEIGHTS``.

Only dense layers whose shapes suit sparse kernels are pruned: a constant 2-D weight of a MatMul (``[K, N]``) or a
Gemm (``[K, N]``, or ``[N, K]`` with ``transB``), with K a multiple of :data:`K_MULTIPLE` and N of
:data:`N_MULTIPLE`. Classifier heads (few outputs) and embeddings are left dense. Pruning without fine-tuning costs
accuracy; the accuracy gate measures how much.
"""

from __future__ import annotations

from typing import Any

import numpy as np

K_MULTIPLE = 16
N_MULTIPLE = 16


def prune_groups(weight: np.ndarray, axis: int) -> np.ndarray:
    """``weight`` with the 2 smallest magnitudes of every 4 consecutive values along ``axis`` set to 0."""
    moved = np.moveaxis(weight, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], -1, 4)
    order = np.argsort(np.abs(groups), axis=-1, kind="stable")
    pruned = groups.copy()
    np.put_along_axis(pruned, order[..., :2], 0, axis=-1)
    return np.moveaxis(pruned.reshape(moved.shape), -1, axis)


def is_2_4(weight: np.ndarray, axis: int) -> bool:
    """Every group of 4 along ``axis`` has at least 2 zeros."""
    moved = np.moveaxis(weight, axis, -1)
    if moved.shape[-1] % 4:
        return False
    groups = moved.reshape(*moved.shape[:-1], -1, 4)
    return bool(np.all(np.count_nonzero(groups, axis=-1) <= 2))


def weights(model: Any) -> list[tuple[Any, Any, int]]:
    """(node, initializer, reduction axis) of every prunable dense layer."""
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    found = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        init = inits[node.input[1]]
        if len(init.dims) != 2 or readers.get(init.name) != 1:
            continue
        trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        k_axis = 1 if trans_b else 0
        k, n = init.dims[k_axis], init.dims[1 - k_axis]
        if k % K_MULTIPLE == 0 and n % N_MULTIPLE == 0:
            found.append((node, init, k_axis))
    return found


def prune_2_4(model: Any) -> tuple[Any, dict[str, Any]]:
    """Prune every suitable weight of ``model`` in place; (model, report of the layers pruned)."""
    from onnx import numpy_helper

    layers = []
    for node, init, axis in weights(model):
        value = numpy_helper.to_array(init)
        pruned = prune_groups(value, axis)
        init.CopyFrom(numpy_helper.from_array(pruned.astype(value.dtype), init.name))
        kept = float(np.sum(pruned ** 2) / max(float(np.sum(value.astype(np.float64) ** 2)), 1e-30))
        layers.append({"node": node.name, "weight": init.name, "shape": list(value.shape),
                       "energy_kept": round(kept, 4)})
    return model, {"pattern": "2:4", "pruned": len(layers), "layers": layers}
