"""Graph fusion plugins, applied by svc-deploy's network step. One sub-package per fusion:

- ``gelu``: the erf and tanh GELU decompositions → one GELU node;
- ``layernorm``: the ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add decomposition → LayerNormalization;
- ``skip_layernorm``: residual Add + LayerNormalization → one skip-LayerNorm node;
- ``attention_scale``: the ``1/sqrt(d)`` attention scale moved onto Q (and into Q's projection where possible).
- ``attention``: multi-head self-attention → ONNX Runtime's ``MultiHeadAttention`` (``ort_contrib`` only).

Every plugin is a :class:`Fusion`: ``find`` returns whole matches and the places where a pattern matched only partly
(those are reported and left alone, never half-rewritten); ``rewrite`` replaces one match with the nodes of an
:data:`FLAVORS` flavor:

- ``onnx``: standard ONNX ops (LayerNormalization, opset 17; Gelu, opset 20) that TensorRT >= 10 and ONNX Runtime
  run natively;
- ``trt_plugin``: TensorRT plugin nodes (op type = plugin name, ``plugin_version``/``plugin_namespace`` attributes,
  weights as tensor attributes) that older TensorRT's ONNX parser hands to its plugin registry;
- ``ort_contrib``: ONNX Runtime contrib ops (``com.microsoft``) for every pattern;
- ``ort``: what ONNX Runtime runs fastest on the CPU, as measured (docs/optimize.md): standard ops where ONNX Runtime
  fuses them itself at session creation (LayerNorm, GELU, residual + LayerNorm), contrib ops where it cannot
  (attention in an INT8 Q/DQ graph): :func:`plugin_flavor` says which a plugin gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

FLAVORS = ("onnx", "trt_plugin", "ort_contrib", "ort")
#: the plugins that emit their contrib op under the ``ort`` flavor (the others emit standard ops there)
ORT_CONTRIB = frozenset({"attention"})
MS_DOMAIN = "com.microsoft"
TRT_DOMAIN = "trt.plugins"
#: the default-domain opset each flavor's new nodes need
ONNX_OPSET = {"LayerNormalization": 17, "Gelu": 20}


@dataclass
class Match:
    """One whole occurrence of a pattern: the nodes it replaces and what the rewrite needs."""

    nodes: list[Any]
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return self.nodes[-1].name or self.nodes[-1].op


@dataclass(frozen=True)
class Partial:
    """A place where a pattern matched only partly: left alone, reported."""

    node: str
    reason: str


@dataclass
class Fusion:
    """A fusion plugin: ``find(graph) -> (matches, partials)``, ``rewrite(graph, match, flavor)``."""

    name: str
    help: str
    find: Callable[[Any], tuple[list[Match], list[Partial]]]
    rewrite: Callable[[Any, Match, str], list[Any]]
    #: default-domain opset the ``onnx`` flavor of the rewrite needs (0: none)
    needs_opset: int = 0


# --- graph helpers (onnx-graphsurgeon) ---------------------------------------------------------------------------------

def producer(tensor: Any) -> Any | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def consumers(tensor: Any, graph: Any) -> list[Any]:
    """Nodes that read ``tensor``; a graph output counts as one more reader (returned as None)."""
    readers: list[Any] = list(tensor.outputs)
    if any(out is tensor for out in graph.outputs):
        readers.append(None)
    return readers


def private(tensor: Any, graph: Any, inside: Iterable[Any]) -> bool:
    """Only nodes of the pattern read ``tensor`` (so the pattern can be removed without changing other results)."""
    ids = {id(n) for n in inside}
    return all(r is not None and id(r) in ids for r in consumers(tensor, graph))


def constant(tensor: Any) -> np.ndarray | None:
    import onnx_graphsurgeon as gs

    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is not None and node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant):
        return np.asarray(node.attrs["value"].values)
    return None


def scalar(tensor: Any) -> float | None:
    value = constant(tensor)
    if value is None or value.size != 1:
        return None
    return float(value.ravel()[0])


def is_scalar(tensor: Any, want: float, rel: float = 1e-3) -> bool:
    got = scalar(tensor)
    return got is not None and abs(got - want) <= rel * max(1.0, abs(want))


def split_constant(node: Any) -> tuple[Any, np.ndarray] | None:
    """A binary ``node`` with exactly one constant operand: (the other operand, the constant's value)."""
    if len(node.inputs) != 2:
        return None
    for t, c in (node.inputs, node.inputs[::-1]):
        value = constant(c)
        if value is not None and constant(t) is None:
            return t, value
    return None


def other_input(node: Any, tensor: Any) -> Any | None:
    """The input of a binary ``node`` that is not ``tensor``."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a is tensor:
        return b
    if b is tensor:
        return a
    return None


def only_reader(tensor: Any, graph: Any, op: str | Sequence[str]) -> Any | None:
    """The single node reading ``tensor`` if it has op ``op``."""
    readers = consumers(tensor, graph)
    ops = (op,) if isinstance(op, str) else tuple(op)
    if len(readers) == 1 and readers[0] is not None and readers[0].op in ops:
        return readers[0]
    return None


def product_tree(start: Any, graph: Any) -> tuple[list[Any], list[Any]] | None:
    """Follow a chain of single-reader Muls from ``start``: (the Mul nodes, their other factors), or None."""
    muls: list[Any] = []
    factors: list[Any] = []
    current = start
    while True:
        node = only_reader(current, graph, "Mul")
        if node is None:
            break
        other = other_input(node, current)
        if other is None:
            return None
        muls.append(node)
        factors.append(other)
        current = node.outputs[0]
    return (muls, factors) if muls else None


def detach(match: Match) -> None:
    """Disconnect the matched nodes (graph cleanup then removes them); done before the new nodes take over the
    matched outputs, so every tensor keeps one producer."""
    for node in match.nodes:
        node.outputs.clear()
        node.inputs.clear()


def plugin_flavor(flavor: str, plugin: str) -> str:
    """The flavor ``plugin`` rewrites with under ``flavor`` (``ort`` is per plugin: see :data:`FLAVORS`)."""
    if flavor != "ort":
        return flavor
    return "ort_contrib" if plugin in ORT_CONTRIB else "onnx"


def registry() -> dict[str, Fusion]:
    """Every fusion plugin, in the order svc-deploy applies them."""
    from servicemaker.plugins.attention import FUSION as attention
    from servicemaker.plugins.attention_scale import FUSION as attention_scale
    from servicemaker.plugins.gelu import FUSION as gelu
    from servicemaker.plugins.layernorm import FUSION as layernorm
    from servicemaker.plugins.skip_layernorm import FUSION as skip_layernorm

    # layernorm before skip_layernorm: the skip fusion reads LayerNormalization nodes, decomposed ones included.
    # attention after attention_scale: it reads the scale wherever attention_scale left it.
    return {f.name: f for f in (layernorm, skip_layernorm, gelu, attention_scale, attention)}
