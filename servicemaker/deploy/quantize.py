"""INT8 with explicit Q/DQ, calibrated on the CPU with ONNX Runtime.

TensorRT 10 deprecated and TensorRT 11 removed implicit INT8 calibration; BERT-family models are quantized by
inserting QuantizeLinear/DequantizeLinear pairs instead, and the same Q/DQ graph runs in ONNX Runtime.

- Only MatMul/Gemm/Conv with constant weights are quantized: int8 weights, symmetric, per output channel (a
  Conv's axis 0, grouped and depthwise ones too); biases stay FP32. Everything precision-sensitive (LayerNorm,
  Softmax, GELU, the attention score/context MatMuls, residual adds) stays in FP32. Quantizing every op type wrecks
  BERT accuracy. Nodes named with one of ``QuantSettings.exclude_prefixes`` stay FP32 too (an ASR network's
  ``featurizer/``: its STFT convolution, mel MatMul and log are precision-critical).
- Activations: uint8 asymmetric for the CPU targets (x86 int8 kernels want unsigned activations), int8 symmetric
  for TensorRT (its Q/DQ layers take zero point 0 only).
- Calibration methods minmax, entropy and percentile (99.999th); batches are collected one at a time (histogram
  methods would otherwise hold every sample's activations), and ranges are cached so re-quantizing with layers
  excluded does not calibrate again. Calibration is deterministic: same graph + data → same scales.
- When the accuracy gate fails, layers fall back to FP32 worst-first (by the cosine error of their own output
  against FP32) in growing sets of 1, 2, 4 … until the gate passes; the report names the layers kept in FP32.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from servicemaker.deploy import accuracy
from servicemaker.deploy.graph import save

Feeds = dict[str, np.ndarray]
METHODS = ("minmax", "entropy", "percentile")
PERCENTILE = 99.999
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")


@dataclass(frozen=True)
class QuantSettings:
    method: str = "percentile"
    symmetric_activations: bool = False
    per_channel: bool = True
    #: node-name prefixes never quantized (e.g. ``featurizer/``)
    exclude_prefixes: tuple[str, ...] = ()


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of feeds, with the range interface its strided
    collection uses (one collect per batch)."""

    def __init__(self, feeds: Sequence[Feeds], inputs: set[str]) -> None:
        self.feeds = [{k: v for k, v in f.items() if k in inputs} for f in feeds]
        self.start, self.end, self.pos = 0, len(self.feeds), 0

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self.pos = start_index, end_index, start_index

    def get_next(self) -> Feeds | None:
        if self.pos >= self.end:
            return None
        self.pos += 1
        return self.feeds[self.pos - 1]

    def rewind(self) -> None:
        self.pos = self.start


def quantizable(model: Any, exclude_prefixes: Sequence[str] = ()) -> list[str]:
    """Names of the MatMul/Gemm/Conv nodes with a constant weight, but those whose name starts with one of
    ``exclude_prefixes``: the ones INT8 quantizes."""
    inits = {t.name for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and len(n.input) > 1
            and n.input[1] in inits and not n.name.startswith(tuple(exclude_prefixes))]


def weight_axis(node: Any) -> int:
    """The output-channel axis of a quantized layer's weight: a Conv's ``[out, in/groups, k...]`` axis 0, a
    MatMul's ``[in, out]`` axis 1, a Gemm's 0 when it has ``transB``."""
    if node.op_type == "Conv":
        return 0
    trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    return 0 if trans_b else 1


def _ensure_names(model: Any) -> Any:
    """Every node gets a name (exclusion lists and reports refer to nodes by name)."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    return model


def calibrate(model: Any, calibration: Sequence[Feeds], settings: QuantSettings, workdir: Path,
              tensors: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Ranges of ``tensors`` over the calibration batches (ONNX Runtime's calibrators, one batch collected at a
    time); cached in ``workdir`` so a re-quantization with fewer layers does not calibrate again."""
    import json

    import onnx
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    if settings.method not in METHODS:
        raise ValueError(f"unknown calibration method {settings.method}")
    if not calibration:
        raise ValueError("INT8 calibration needs at least one batch of calibration data")
    workdir.mkdir(parents=True, exist_ok=True)
    cache = workdir / f"ranges-{settings.method}-{'sym' if settings.symmetric_activations else 'asym'}.json"
    if cache.exists():
        cached = json.loads(cache.read_text())
        if set(tensors) <= set(cached):
            return {k: tuple(v) for k, v in cached.items()}
    # The calibrator picks tensors by their value_info; contrib-op outputs have none after ONNX shape inference.
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    known = {v.name for v in copy.graph.value_info} | {v.name for v in copy.graph.output}
    for name in tensors:
        if name not in known:
            copy.graph.value_info.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    source = workdir / "calibration-input.onnx"
    save(copy, source)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[settings.method]
    extra: dict[str, Any] = {"symmetric": settings.symmetric_activations}
    if settings.method == "percentile":
        extra.update(percentile=PERCENTILE, num_bins=2048, symmetric=True)
    calibrator = create_calibrator(source, list(QUANTIZED_OPS), augmented_model_path=str(workdir / "augmented.onnx"),
                                   calibrate_method=method, use_external_data_format=source.with_name(
                                       "model.onnx.data").exists() or copy.ByteSize() > (1 << 30),
                                   providers=["CPUExecutionProvider"], extra_options=extra)
    inputs = {i.name for i in model.graph.input}
    with contextlib.redirect_stdout(io.StringIO()):  # ONNX Runtime's calibrators print their progress
        for batch in calibration:  # one batch at a time: histogram methods would otherwise hold every activation
            calibrator.collect_data(_Reader([batch], inputs))
        data = calibrator.compute_data()
    ranges = {}
    for name in tensors:
        if name in data:
            lo, hi = data[name].range_value
            ranges[name] = (float(np.min(lo)), float(np.max(hi)))
    cache.write_text(json.dumps(ranges, sort_keys=True))
    return ranges


def _activation_qparams(lo: float, hi: float, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    if symmetric:
        scale = max(abs(lo), abs(hi), 1e-8) / 127.0
        return np.array(scale, np.float32), np.array(0, np.int8)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    return np.array(scale, np.float32), np.array(int(round(-lo / scale)), np.uint8)


def quantize_weight(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per-channel (``axis`` = output channels): (int8 values, scales)."""
    other = tuple(i for i in range(weight.ndim) if i != axis)
    scale = np.maximum(np.abs(weight).max(axis=other), 1e-12) / 127.0
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def insert_qdq(model: Any, ranges: dict[str, tuple[float, float]], settings: QuantSettings,
               exclude: Sequence[str] = ()) -> Any:
    """A copy of ``model`` with each quantizable layer reading ``DQ(Q(x))`` and ``DQ(int8 W)``. Only the layer
    reads the quantized activation: other readers of ``x`` (a residual Add, a Shape) keep the FP32 tensor."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    targets = set(quantizable(model, settings.exclude_prefixes)) - set(exclude)
    act_dq: dict[str, str] = {}
    w_dq: dict[str, str] = {}
    new_inits: list[Any] = []
    nodes: list[Any] = []
    for node in g.node:
        if node.name in targets and node.input[0] in ranges:
            x, w = node.input[0], node.input[1]
            if x not in act_dq:
                scale, zero = _activation_qparams(*ranges[x], settings.symmetric_activations)
                base = f"{x}_qdq"
                new_inits += [numpy_helper.from_array(scale, f"{base}_scale"),
                              numpy_helper.from_array(zero, f"{base}_zero_point")]
                nodes.append(helper.make_node("QuantizeLinear", [x, f"{base}_scale", f"{base}_zero_point"],
                                              [f"{base}_q"], name=f"{base}/QuantizeLinear"))
                nodes.append(helper.make_node("DequantizeLinear", [f"{base}_q", f"{base}_scale", f"{base}_zero_point"],
                                              [f"{base}_dq"], name=f"{base}/DequantizeLinear"))
                act_dq[x] = f"{base}_dq"
            if w not in w_dq:
                axis = weight_axis(node)
                weight = numpy_helper.to_array(inits[w])
                if settings.per_channel:
                    q, scale = quantize_weight(weight, axis)
                    zero = np.zeros(scale.shape, np.int8)
                else:
                    q, scale = quantize_weight(weight.reshape(-1, 1), 1)
                    q, scale, zero = q.reshape(weight.shape), scale.reshape(()), np.zeros((), np.int8)
                new_inits += [numpy_helper.from_array(q, f"{w}_int8"), numpy_helper.from_array(scale, f"{w}_scale"),
                              numpy_helper.from_array(zero, f"{w}_zero_point")]
                attrs = {"axis": axis} if scale.ndim else {}
                nodes.append(helper.make_node("DequantizeLinear", [f"{w}_int8", f"{w}_scale", f"{w}_zero_point"],
                                              [f"{w}_dq"], name=f"{w}/DequantizeLinear", **attrs))
                w_dq[w] = f"{w}_dq"
            node.input[0], node.input[1] = act_dq[x], w_dq[w]
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept + new_inits)
    return out


def quantize(model: Any, calibration: Sequence[Feeds], settings: QuantSettings, workdir: Path,
             exclude: Sequence[str] = ()) -> Any:
    """The Q/DQ INT8 graph of ``model`` (FP32, node names set); calibration ranges are cached in ``workdir``."""
    names = set(quantizable(model, settings.exclude_prefixes))
    tensors = sorted({n.input[0] for n in model.graph.node if n.name in names})
    ranges = calibrate(model, calibration, settings, workdir, tensors)
    return insert_qdq(model, ranges, settings, exclude)


def _with_outputs(model: Any, names: Sequence[str]) -> Any:
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    have = {o.name for o in copy.graph.output}
    for name in names:
        if name not in have:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy


def _dequantized(producers: dict[str, Any], tensor: str, inits: dict[str, np.ndarray]) -> tuple[Any, Any] | None:
    """How ``tensor`` (a DQ output) is quantized: (source name, function fake-quantizing an array like it), given
    the graph's tensor → producing node map."""
    dq = producers.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    scale, zero = inits[dq.input[1]], inits[dq.input[2]] if len(dq.input) > 2 else np.zeros((), np.int8)
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if dq.input[0] in inits:  # a weight: stored quantized
        w = inits[dq.input[0]].astype(np.float32)
        shape = [1] * w.ndim
        if scale.ndim:
            shape[axis] = -1
        return dq.input[0], (w - zero.astype(np.float32).reshape(shape)) * scale.reshape(shape)
    q = producers.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        return None
    info = np.iinfo(zero.dtype)

    def fake(x: np.ndarray) -> np.ndarray:
        xq = np.clip(np.round(x / scale) + zero.astype(np.float32), info.min, info.max)
        return (xq - zero.astype(np.float32)) * scale

    return q.input[0], fake


def _layer_session(node: Any, inits: dict[str, np.ndarray], like: Any, threads: int) -> Any:
    """ONNX Runtime running ``node`` alone: inputs ``x`` (its activation) and ``w`` (its weight), its other inputs
    (a bias) the constants of ``inits``; ``like``'s opset and IR version. None when an other input is not constant."""
    import onnx
    from onnx import helper, numpy_helper

    from servicemaker.deploy.optimize import default_opset, session

    rest = list(node.input[2:])
    if any(name and name not in inits for name in rest):
        return None
    consts = [numpy_helper.from_array(inits[name], f"c{i}") for i, name in enumerate(rest) if name]
    single = helper.make_node(node.op_type, ["x", "w"] + [f"c{i}" if name else "" for i, name in enumerate(rest)],
                              ["y"])
    single.attribute.extend(node.attribute)
    graph = helper.make_graph([single], "layer", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                                                  for n in ("x", "w")],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", default_opset(like))])
    model.ir_version = like.ir_version
    return session(model, threads)


def sensitivity(fp32: Any, int8: Any, samples: Sequence[Feeds], threads: int = 0) -> list[tuple[str, float]]:
    """(node, local error) of every quantized layer, worst first. The local error is ``1 - cosine`` between the
    layer's FP32 output and its output with its own input and weight quantized, both computed from the FP32
    network's activations: each layer's own cost, not the error the layers before it pass down. Each layer runs
    alone in ONNX Runtime with its own attributes (a Conv's strides, padding, groups ...)."""
    from onnx import numpy_helper

    from servicemaker.deploy.optimize import run

    inits = {t.name: numpy_helper.to_array(t) for t in int8.graph.initializer}
    fp32_inits = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
    tensors = {o for n in fp32.graph.node for o in n.output} | {i.name for i in fp32.graph.input}
    producers = {o: n for n in int8.graph.node for o in n.output}
    originals = {n.name: n for n in fp32.graph.node}
    layers = []
    for node in int8.graph.node:
        if node.op_type not in QUANTIZED_OPS or len(node.input) < 2:
            continue
        act, weight = _dequantized(producers, node.input[0], inits), _dequantized(producers, node.input[1], inits)
        if act is None or weight is None or weight[0] not in inits or act[0] not in tensors:
            continue
        original = originals.get(node.name)
        if original is None or original.input[1] not in fp32_inits:
            continue
        layer = _layer_session(original, fp32_inits, fp32, threads)
        if layer is not None:
            layers.append((node, act, weight[1], fp32_inits[original.input[1]], layer))
    names = sorted({act[0] for _, act, _, _, _ in layers})
    values = run(_with_outputs(fp32, names), samples[:4], threads, outputs=names)
    scores = []
    for node, (source, fake), w_q, w, layer in layers:
        i = names.index(source)
        xs = [v[i].astype(np.float32) for v in values]
        ref = np.concatenate([layer.run(None, {"x": x, "w": w})[0].ravel() for x in xs])
        got = np.concatenate([layer.run(None, {"x": fake(x).astype(np.float32), "w": w_q.astype(np.float32)})[0]
                              .ravel() for x in xs])
        scores.append((node.name, round(1.0 - accuracy.cosine(ref.astype(np.float64), got.astype(np.float64)), 8)))
    return sorted(scores, key=lambda s: -s[1])


def count_qdq(model: Any) -> dict[str, int]:
    ops = [n.op_type for n in model.graph.node]
    return {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear")}


def quantize_gated(model: Any, reference: Sequence[Sequence[np.ndarray]], names: Sequence[str],
                   calibration: Sequence[Feeds], samples: Sequence[Feeds], settings: QuantSettings, tolerance: float,
                   workdir: Path, threads: int = 0, extra: accuracy.ExtraGate | None = None
                   ) -> tuple[Any, dict[str, Any]]:
    """Quantize, then fall back to FP32 layer by layer while the gate fails. ``reference``: the FP32 original's
    outputs (``names``) on ``samples``; ``extra``: the family's gate figures (:func:`accuracy.compare`)."""
    from servicemaker.deploy.optimize import run

    started = time.perf_counter()
    model = _ensure_names(model)
    layers = quantizable(model, settings.exclude_prefixes)
    int8 = quantize(model, calibration, settings, workdir)
    report: dict[str, Any] = {
        "method": settings.method, "activations": "int8 symmetric" if settings.symmetric_activations else "uint8",
        "weights": "int8 symmetric per-channel" if settings.per_channel else "int8 symmetric",
        "calibration_batches": len(calibration), "layers": len(layers), "kept_fp32": []}
    if settings.exclude_prefixes:
        report["excluded"] = {"prefixes": list(settings.exclude_prefixes),
                              "layers": len(quantizable(model)) - len(layers)}
    if samples:
        gate = accuracy.compare(reference, run(int8, samples, threads), samples, names, extra)
        report["first_attempt"] = gate.as_dict(tolerance)
        if not gate.within(tolerance):
            ranked = [name for name, _ in sensitivity(model, int8, samples, threads)]
            k = 1
            while not gate.within(tolerance) and k <= len(ranked):
                kept = ranked[:k]
                int8 = quantize(model, calibration, settings, workdir, exclude=kept)
                gate = accuracy.compare(reference, run(int8, samples, threads), samples, names, extra)
                report["kept_fp32"] = kept
                k = len(ranked) + 1 if k == len(ranked) else min(2 * k, len(ranked))
    report["quantized"] = len(layers) - len(report["kept_fp32"])
    report.update(count_qdq(int8))
    report["seconds"] = round(time.perf_counter() - started, 3)
    return int8, report
