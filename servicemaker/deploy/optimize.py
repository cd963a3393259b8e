"""The optimizing compiler of svc-deploy's network step: fusion plugins, 2:4 sparsity, INT8 Q/DQ, accuracy gate.

``compile_network`` takes the constant-folded FP32 graph and returns the graph to ship plus a JSON-able report:

1. **fuse** (``nn.fuse``): every plugin of :mod:`servicemaker.plugins` in turn; after each, ONNX Runtime runs the
   graph before and after on sample inputs, and a plugin whose rewrite moves any output beyond 1e-4 is undone and
   reported (the ``trt_plugin`` flavor cannot run in ONNX Runtime: its check is left to the engine gate);
2. **sparsify** (``nn.sparsity=2:4``): :mod:`servicemaker.deploy.sparsity`;
3. **quantize** (``nn.precision=int8``): :mod:`servicemaker.deploy.quantize`, calibrated on the CPU;
4. **gate**: the result against the FP32 original (:mod:`servicemaker.deploy.accuracy`), with the family's own
   figures where it has some (speech recognition: the character error rate against the FP32 transcripts, which
   then is what ``nn.accuracy_tolerance`` bounds); an INT8 graph that fails falls back to FP32 layer by layer,
   worst layer first, before the gate is allowed to fail the deploy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from servicemaker.deploy import accuracy
from servicemaker.errors import ServiceMakerError

Feeds = dict[str, np.ndarray]
#: fused FP32 graphs must match their input this closely (max |a-b| <= ATOL + RTOL*|b|)
FUSION_ATOL = 1e-4
FUSION_RTOL = 1e-4
FLAVOR_CHOICES = ("auto", "onnx", "trt_plugin", "ort_contrib", "ort")


class AccuracyError(ServiceMakerError):
    """The optimized network is less accurate than ``nn.accuracy_tolerance`` allows."""

    exit_code = 5


@dataclass(frozen=True)
class CompileOptions:
    target: str                          # tensorrt | onnxruntime | onnxruntime-python
    precision: str = "fp32"              # fp32 | fp16 | int8
    fuse: bool = True
    fusion_ops: str = "auto"             # auto | onnx | trt_plugin | ort_contrib
    sparsity: str = "none"               # none | 2:4
    calibration_method: str = "percentile"
    accuracy_tolerance: float = 0.01
    allow_accuracy_drop: bool = False
    threads: int = 0                     # ONNX Runtime intra-op threads for checks and calibration (0: default)
    int8_exclude: tuple[str, ...] = ()   # node-name prefixes INT8 leaves in FP32 (e.g. ``featurizer/``)


def flavor_for(target: str, fusion_ops: str = "auto") -> str:
    """Which node flavor the fusion plugins emit. ``auto``: standard ONNX for TensorRT (>= 10 runs it natively and
    fuses attention itself); ``ort`` for the CPU targets: standard ops where ONNX Runtime fuses them itself, its
    ``MultiHeadAttention`` contrib op for attention, which it does not fuse in an INT8 Q/DQ graph (measured:
    docs/optimize.md)."""
    if fusion_ops != "auto":
        return fusion_ops
    return "ort" if target in ("onnxruntime", "onnxruntime-python") else "onnx"


def session(model: Any, threads: int = 0):
    """An ONNX Runtime CPU session with spinning off (idle pools otherwise steal cores from the next session)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if isinstance(model, Path):
        model = str(model)
    elif not isinstance(model, (str, bytes)):
        model = model.SerializeToString()
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def run(model: Any, feeds: Sequence[Feeds], threads: int = 0, outputs: list[str] | None = None) -> list[list[np.ndarray]]:
    sess = session(model, threads)
    names = {i.name for i in sess.get_inputs()}
    return [sess.run(outputs, {k: v for k, v in f.items() if k in names}) for f in feeds]


def with_domains(model: Any) -> Any:
    """Add the opset imports of every node domain the graph uses (contrib and plugin nodes)."""
    have = {o.domain for o in model.opset_import}
    for domain in sorted({n.domain for n in model.graph.node} - have - {"", "ai.onnx"}):
        model.opset_import.add(domain=domain, version=1)
    return model


def _export(graph: Any, like: Any) -> Any:
    import onnx_graphsurgeon as gs

    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    model = gs.export_onnx(graph)
    model.ir_version = like.ir_version
    del model.opset_import[:]
    model.opset_import.extend(like.opset_import)
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = graph.opset
    return with_domains(model)


def default_opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(model: Any, opset: int) -> Any:
    """The model converted to ``opset`` (onnx.version_converter); raises ValueError when it cannot be."""
    import onnx
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, opset)
        onnx.checker.check_model(converted)
    except Exception as err:  # noqa: BLE001 - the converter raises many types
        raise ValueError(f"cannot convert the graph from opset {default_opset(model)} to {opset}: {err}") from None
    return converted


def _diff(before: list[list[np.ndarray]], after: list[list[np.ndarray]]) -> tuple[float, bool]:
    """(largest |after - before| over every float output of every feed, whether all are within the fusion
    tolerance); (inf, False) where shapes differ."""
    worst, ok = 0.0, True
    for b_row, a_row in zip(before, after):
        for b, a in zip(b_row, a_row):
            if b.shape != a.shape:
                return float("inf"), False
            if b.size and np.issubdtype(b.dtype, np.floating):
                worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b))))
                ok = ok and bool(np.allclose(a, b, rtol=FUSION_RTOL, atol=FUSION_ATOL))
            elif not np.array_equal(a, b):
                ok = False
    return worst, ok


def fuse(model: Any, flavor: str, feeds: Sequence[Feeds], threads: int = 0,
         plugins: Sequence[str] | None = None, reference: list[list[np.ndarray]] | None = None
         ) -> tuple[Any, dict[str, Any]]:
    """Apply the fusion plugins to ``model``; each is checked against the graph before it and undone on mismatch.
    ``reference``: ``model``'s outputs on ``feeds`` where the caller has them already."""
    import onnx
    import onnx_graphsurgeon as gs

    from servicemaker.plugins import plugin_flavor, registry

    report: dict[str, Any] = {"flavor": flavor, "plugins": {}}
    checked = flavor != "trt_plugin" and bool(feeds)
    if checked and reference is None:
        reference = run(model, feeds, threads)
    for name, fusion in registry().items():
        if plugins is not None and name not in plugins:
            continue
        started = time.perf_counter()
        entry: dict[str, Any] = {"fused": 0}
        report["plugins"][name] = entry
        candidate = model
        graph = gs.import_onnx(candidate)
        matches, partials = fusion.find(graph)
        entry["partial"] = [{"node": p.node, "reason": p.reason} for p in partials]
        if not matches:
            entry["status"] = "no match"
            entry["seconds"] = round(time.perf_counter() - started, 3)
            continue
        own = plugin_flavor(flavor, name)
        needs = fusion.needs_opset if own == "onnx" or name == "layernorm" else 0
        if needs > default_opset(candidate):
            try:
                candidate = upgrade_opset(candidate, needs)
            except ValueError as err:
                entry.update(status="skipped", reason=str(err))
                continue
            graph = gs.import_onnx(candidate)
            matches, _ = fusion.find(graph)
        rewritten = 0
        for match in matches:
            if fusion.rewrite(graph, match, own):
                rewritten += 1
        if not rewritten:
            entry.update(matched=len(matches), status="native",
                         reason="left as it is: the target fuses this pattern itself")
            entry["seconds"] = round(time.perf_counter() - started, 3)
            continue
        candidate = _export(graph, candidate)
        try:
            onnx.checker.check_model(candidate)
        except onnx.checker.ValidationError as err:
            entry.update(status="undone", reason=f"the rewritten graph is not valid ONNX: {err}")
            continue
        if checked:
            try:
                after = run(candidate, feeds, threads)
            except Exception as err:  # noqa: BLE001 - ONNX Runtime raises its own types
                entry.update(status="undone", reason=f"ONNX Runtime cannot run the rewritten graph: {err}")
                continue
            diff, ok = _diff(reference, after)
            entry["max_abs_diff"] = diff
            if not ok:
                entry.update(status="undone", reason=f"outputs moved by {diff:.3g} (more than 1e-4)")
                continue
            reference = after
        entry.update(fused=rewritten, status="ok" if checked else "unchecked")
        entry["seconds"] = round(time.perf_counter() - started, 3)
        model = candidate
    return model, report


def count_ops(model: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _best_calibration(tried: list[tuple[str, Any, dict[str, Any]]], reference: list[list[np.ndarray]],
                      names: list[str], samples: Sequence[Feeds], opts: CompileOptions,
                      extra_gate: accuracy.ExtraGate | None) -> tuple[Any, dict[str, Any]]:
    """``nn.calibration_method=auto``: of the INT8 graphs each calibration method gave, the one that scores best on
    the gate's held-out examples — top-1 accuracy on their real labels where the gate data has labels, then the
    gate's own measure (1 - cosine, or the family's error rate); every method's figures go in the report."""
    if len(tried) == 1:
        return tried[0][1], tried[0][2]
    scores: dict[str, dict[str, Any]] = {}
    ranked = []
    for method, graph, report in tried:
        gate = accuracy.compare(reference, run(graph, samples, opts.threads), samples, names, extra_gate)
        labeled = gate.figures.get("labels_top1")
        scores[method] = {"drop": round(gate.drop, 6), "cosine": round(gate.cosine, 6),
                          "kept_fp32": len(report["kept_fp32"]),
                          **({"labels_top1": labeled} if labeled is not None else {})}
        ranked.append(((labeled if labeled is not None else 0.0, -gate.drop, -len(report["kept_fp32"])), method,
                       graph, report))
    _, method, graph, report = max(ranked, key=lambda r: r[0])
    report["auto"] = {"chosen": method, "scores": scores}
    return graph, report


def compile_network(model: Any, opts: CompileOptions, calibration: Sequence[Feeds], samples: Sequence[Feeds],
                    workdir: Path, activity: Callable[[str], Any] | None = None,
                    extra_gate: accuracy.ExtraGate | None = None) -> tuple[Any, dict[str, Any]]:
    """Optimize ``model`` (constant-folded FP32) for ``opts.target``; (the graph to ship, the report).

    ``calibration``: INT8 calibration feeds; ``samples``: the accuracy gate's feeds (and the fusion checks');
    ``extra_gate``: the family's own gate figures (:data:`accuracy.ExtraGate`).
    Raises :class:`AccuracyError` when the result is less accurate than allowed.
    """
    from contextlib import nullcontext

    from servicemaker.deploy import quantize, sparsity

    step = activity or (lambda _label: nullcontext())
    import onnx

    model = onnx.shape_inference.infer_shapes(model)
    original = model
    report: dict[str, Any] = {"precision": opts.precision, "ops_before": count_ops(model)}
    flavor = flavor_for(opts.target, opts.fusion_ops)
    names = [o.name for o in original.graph.output]
    reference = run(original, samples, opts.threads) if samples else []  # the FP32 outputs every check compares to
    if opts.fuse:
        with step("Fusing GELU/LayerNorm/attention patterns"):
            model, report["fusion"] = fuse(model, flavor, samples, opts.threads, reference=reference or None)
    if opts.sparsity == "2:4":
        with step("Pruning weights to 2:4 sparsity"):
            model, report["sparsity"] = sparsity.prune_2_4(model)
    if opts.precision == "int8":
        methods = quantize.METHODS if opts.calibration_method == "auto" else (opts.calibration_method,)
        tried = []
        for method in methods:
            settings = quantize.QuantSettings(method=method, symmetric_activations=opts.target == "tensorrt",
                                              exclude_prefixes=opts.int8_exclude)
            with step(f"Calibrating INT8 ({method}) on {len(calibration)} batches"):
                tried.append((method, *quantize.quantize_gated(
                    model, reference, names, calibration, samples, settings, opts.accuracy_tolerance, workdir,
                    opts.threads, extra_gate)))
        model, report["int8"] = _best_calibration(tried, reference, names, samples, opts, extra_gate)
    report["ops_after"] = count_ops(model)
    runnable = flavor != "trt_plugin" and bool(samples)
    if runnable:
        with step("Checking accuracy against the FP32 graph"):
            gate = accuracy.compare(reference, run(model, samples, opts.threads), samples, names, extra_gate)
        report["accuracy"] = gate.as_dict(opts.accuracy_tolerance)
        if not gate.within(opts.accuracy_tolerance) and not opts.allow_accuracy_drop:
            raise AccuracyError(
                f"the optimized network loses more accuracy than nn.accuracy_tolerance={opts.accuracy_tolerance} "
                f"allows: {gate.summary()}",
                hint="raise --nn.accuracy_tolerance, choose --nn.precision=fp16/fp32 or --nn.sparsity=none, "
                     "or pass --allow-accuracy-drop to deploy it anyway")
    else:
        report["accuracy"] = {"status": "not run on the CPU", "reason": "TensorRT plugin nodes run only in TensorRT"
                              if flavor == "trt_plugin" else "no sample inputs"}
    return model, report
