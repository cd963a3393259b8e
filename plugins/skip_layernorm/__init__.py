"""Skip-LayerNorm: ``LayerNormalization(Add(x, residual))`` → one node, the residual add of every transformer
sub-layer (and of BERT's embedding sum). Runs after the ``layernorm`` plugin, so decomposed LayerNorms count too.

Emits: ``ort_contrib`` com.microsoft SkipLayerNormalization (a constant bias added to ``x`` first, the dense
layer's bias, moves into its ``bias`` input); ``trt_plugin`` CustomSkipLayerNormPluginDynamic version 1 (``ld``,
``type_id``, ``gamma``/``beta`` as tensor attributes). The ``onnx`` flavor leaves Add + LayerNormalization as they
are: TensorRT >= 10 fuses that pair itself, and standard ONNX has no skip-LayerNorm op.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from servicemaker.plugins import (MS_DOMAIN, TRT_DOMAIN, Fusion, Match, Partial, constant, detach, private, producer,
                                  split_constant)


def _rank3(tensor: Any) -> bool:
    return tensor.shape is not None and len(tensor.shape) == 3


def _broadcast(a: Any, b: Any) -> bool:
    """The two summands' shapes differ where both are known (symbolic dims from different exporter passes
    cannot be compared; ONNX Runtime's check after the rewrite catches a broadcast those hide)."""
    return any(isinstance(x, int) and isinstance(y, int) and x != y or (x == 1) != (y == 1)
               for x, y in zip(a, b))


def find(graph: Any) -> tuple[list[Match], list[Partial]]:
    matches: list[Match] = []
    partials: list[Partial] = []
    for ln in list(graph.nodes):
        if ln.op != "LayerNormalization":
            continue
        name = ln.name or "LayerNormalization"
        add = producer(ln.inputs[0])
        if add is None or add.op != "Add":
            continue  # a LayerNorm without a residual: nothing to fuse
        if len(ln.inputs) < 3 or constant(ln.inputs[1]) is None or constant(ln.inputs[2]) is None \
                or len(ln.outputs) != 1:
            partials.append(Partial(name, "LayerNormalization has no constant gamma and beta"))
            continue
        axis = int(ln.attrs.get("axis", -1))
        a, b = add.inputs
        if constant(a) is not None or constant(b) is not None:
            partials.append(Partial(name, "the Add before LayerNormalization adds a constant, not a residual"))
            continue
        if axis not in (-1, 2) or not (_rank3(a) and _rank3(b)):
            partials.append(Partial(name, "not a [batch, sequence, hidden] LayerNorm over the hidden axis"))
            continue
        if _broadcast(a.shape, b.shape):
            partials.append(Partial(name, f"the summands have different shapes {list(a.shape)} and {list(b.shape)} "
                                          "(a broadcast add)"))
            continue
        if not private(add.outputs[0], graph, [ln]):
            partials.append(Partial(name, "the residual sum is also read elsewhere"))
            continue
        gamma = constant(ln.inputs[1]).astype(np.float32).ravel()
        values = {"x": a, "skip": b, "gamma": gamma, "beta": constant(ln.inputs[2]).astype(np.float32).ravel(),
                  "epsilon": float(ln.attrs.get("epsilon", 1e-5))}
        # x = y + bias (a dense layer's bias): SkipLayerNormalization can add it itself
        for side, other in ((a, b), (b, a)):
            bias_add = producer(side)
            if bias_add is None or bias_add.op != "Add" or not private(side, graph, [add]):
                continue
            split = split_constant(bias_add)
            if split is not None and split[1].ndim == 1 and split[1].size == gamma.size:
                values.update(x=split[0], skip=other, bias=split[1].astype(np.float32), bias_node=bias_add)
                break
        matches.append(Match([add, ln], values))
    return matches, partials


def rewrite(graph: Any, match: Match, flavor: str) -> list[Any]:
    import onnx_graphsurgeon as gs

    if flavor == "onnx":
        return []  # Add + LayerNormalization stays: TensorRT >= 10 fuses the pair
    v = match.values
    out = match.nodes[-1].outputs[0]
    name = f"{match.where}/SkipLayerNorm"
    gamma, beta = gs.Constant(f"{name}/gamma", v["gamma"]), gs.Constant(f"{name}/beta", v["beta"])
    if flavor == "ort_contrib":
        inputs = [v["x"], v["skip"], gamma, beta]
        nodes = match.nodes
        if "bias" in v:
            inputs.append(gs.Constant(f"{name}/bias", v["bias"]))
            nodes = [v["bias_node"]] + nodes
        detach(type(match)(nodes, v))
        node = gs.Node("SkipLayerNormalization", name, attrs={"epsilon": v["epsilon"]}, inputs=inputs,
                       outputs=[out], domain=MS_DOMAIN)
    else:
        x = v["x"]
        if "bias" in v:  # the plugin's bias field is optional; keep the dense bias Add outside it
            x = v["bias_node"].outputs[0]
        detach(match)
        node = gs.Node("CustomSkipLayerNormPluginDynamic", name, inputs=[x, v["skip"]], outputs=[out],
                       domain=TRT_DOMAIN,
                       attrs={"plugin_version": "1", "plugin_namespace": "", "type_id": 0, "ld": int(v["gamma"].size),
                              "gamma": gamma, "beta": beta})
    graph.nodes.append(node)
    return [node]


FUSION = Fusion("skip_layernorm", "residual Add + LayerNormalization → SkipLayerNormalization / "
                "CustomSkipLayerNormPluginDynamic", find, rewrite)
