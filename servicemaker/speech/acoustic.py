"""A CTC acoustic model's interface (its features and length inputs, its log-prob output), its time stride, the
checks that it fits a featurizer, and :func:`fuse`: the featurizer graph in front of it, one graph from audio
samples to log-probabilities and ``encoded_lengths``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from servicemaker.errors import ValidationError
from servicemaker.speech.featurizer import FeaturizerConfig


_FLOATS = {1, 10, 11, 16}      # float32, float16, float64, bfloat16
_INTS = {6, 7}                  # int32, int64


@dataclass(frozen=True)
class AcousticInterface:
    """Where a CTC acoustic model takes its features and gives its log-probabilities."""

    features: Any                 # the rank-3 float input [batch, n_mels, frames]
    length: Any | None            # its rank-1 integer input (frames per row), when it has one
    logprobs: Any | None          # the first rank-3 float output [batch, frames', classes]
    encoded_lengths: Any | None   # a rank-1 integer output (frames' per row), when it has one
    problems: tuple[str, ...]


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim]


def _describe(value_info: Any) -> str:
    from onnx import helper

    if not value_info.type.HasField("tensor_type") or value_info.type.tensor_type.elem_type == 0:
        return f"{value_info.name} (not a typed tensor)"
    kind = helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type).name
    return f"{value_info.name} {kind} {_dims(value_info)}"


def acoustic_interface(model: Any) -> AcousticInterface:
    """Find the feature and length inputs and the log-prob and length outputs of ``model``; problems as strings."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    problems: list[str] = []

    def kind(v: Any) -> tuple[int, int]:
        return v.type.tensor_type.elem_type, len(v.type.tensor_type.shape.dim)

    feats = [v for v in inputs if kind(v)[0] in _FLOATS and kind(v)[1] == 3]
    lens = [v for v in inputs if kind(v)[0] in _INTS and kind(v)[1] == 1]
    others = [v for v in inputs if v not in feats and v not in lens]
    if not feats:
        problems.append("the graph has no rank-3 float input [batch, features, frames] for the mel features "
                        f"(inputs: {', '.join(_describe(v) for v in inputs) or 'none'})")
    elif len(feats) > 1:
        problems.append(f"the graph has {len(feats)} rank-3 float inputs ({', '.join(v.name for v in feats)}); "
                        "a CTC acoustic model takes one: the mel features")
    if len(lens) > 1:
        problems.append(f"the graph has {len(lens)} rank-1 integer inputs ({', '.join(v.name for v in lens)}); "
                        "a CTC acoustic model takes at most one: the feature length")
    for v in others:
        problems.append(f"graph input {_describe(v)} is neither the features [batch, features, frames] nor "
                        "their length [batch]")
    outs = list(model.graph.output)
    logits = [v for v in outs if kind(v)[0] in _FLOATS and kind(v)[1] == 3]
    out_lens = [v for v in outs if kind(v)[0] in _INTS and kind(v)[1] == 1]
    if not logits:
        problems.append("the graph has no rank-3 float output [batch, frames, classes] for the log-probabilities "
                        f"(outputs: {', '.join(_describe(v) for v in outs) or 'none'})")
    for v in feats[:1] + logits[:1]:
        dims = _dims(v)
        if isinstance(dims[0], int) and dims[0] > 0:
            problems.append(f"{v.name} has a fixed batch size {dims[0]}; export with a dynamic batch axis")
    if feats:
        frames = _dims(feats[0])[2]
        if isinstance(frames, int) and frames > 0:
            problems.append(f"{feats[0].name} has a fixed number of frames {frames}; export with a dynamic time "
                            "axis")
    named = [v for v in out_lens if "len" in v.name.lower()]
    return AcousticInterface(feats[0] if feats else None, lens[0] if lens else None,
                             logits[0] if logits else None, (named or out_lens or [None])[0], tuple(problems))


def check_acoustic_model(acoustic_model: Any, cfg: FeaturizerConfig) -> list[str]:
    """Why ``acoustic_model`` cannot take the features ``cfg`` makes, as readable strings; empty when it fits."""
    face = acoustic_interface(acoustic_model)
    problems = list(face.problems)
    if face.features is not None:
        want = _dims(face.features)[1]
        if isinstance(want, int) and want > 0 and want != cfg.features:
            problems.append(f"the graph expects {want} features but the preprocessor makes {cfg.features}")
    return problems


def _require(face: AcousticInterface) -> None:
    if face.problems:
        raise ValidationError("the graph does not look like a CTC acoustic model", list(face.problems),
                              hint="export the model's encoder and CTC decoder (NeMo: model.export('x.onnx'))")


def time_stride(acoustic_model: Any) -> int:
    """The acoustic model's time subsampling: run it in ONNX Runtime on 64 and 128 frames of zeros and compare the
    frames of its log-probabilities."""
    import onnxruntime as ort
    from onnx import helper

    face = acoustic_interface(acoustic_model)
    _require(face)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(acoustic_model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    n_mels = _dims(face.features)[1]
    n_mels = n_mels if isinstance(n_mels, int) and n_mels > 0 else 80
    shapes = []
    for frames in (64, 128):
        feeds = {face.features.name: np.zeros((1, n_mels, frames), dtype=np.float32)}
        if face.length is not None:
            dtype = helper.tensor_dtype_to_np_dtype(face.length.type.tensor_type.elem_type)
            feeds[face.length.name] = np.array([frames], dtype=dtype)
        try:
            out = session.run([face.logprobs.name], feeds)[0]
        except Exception as err:  # noqa: BLE001 - ONNX Runtime raises its own exception types
            raise ValidationError(f"the acoustic model does not run on {frames} frames of features: {err}",
                                  hint="check the graph with svc-inspect; it must take [batch, features, frames]")
        shapes.append(out.shape)
    grown = [i for i in (1, 2) if shapes[1][i] != shapes[0][i]]
    if not grown or shapes[1][grown[0]] <= shapes[0][grown[0]]:
        raise ValidationError(f"the output {face.logprobs.name} does not grow with the input frames (64 frames → "
                              f"{list(shapes[0])}, 128 → {list(shapes[1])}): not a CTC acoustic model",
                              hint="export the model with a dynamic time axis")
    return max(1, round(64 / (shapes[1][grown[0]] - shapes[0][grown[0]])))


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _same_ops(model: Any, a: int, b: int) -> bool:
    """Every default-domain op of ``model`` has the same definition at opset ``a`` as at ``b``."""
    from onnx import defs

    try:
        return all(defs.get_schema(n.op_type, a, "").since_version == defs.get_schema(n.op_type, b, "").since_version
                   for n in model.graph.node if n.domain in ("", "ai.onnx"))
    except defs.SchemaError:
        return False


def _set_opset(model: Any, version: int) -> Any:
    from onnx import ModelProto, version_converter

    if _opset(model) == version:
        return model
    if _same_ops(model, _opset(model), version):
        copy = ModelProto()
        copy.CopyFrom(model)
        for o in copy.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = version
        return copy
    return version_converter.convert_version(model, version)


def _rename(graph: Any, old: str, new: str) -> None:
    """Rename the tensor ``old`` to ``new`` everywhere in ``graph`` (and the inputs of its subgraphs)."""
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename(sub, old, new)
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        if v.name == old:
            v.name = new
    for t in graph.initializer:
        if t.name == old:
            t.name = new


def _names(graph: Any) -> set[str]:
    names = {n for node in graph.node for n in list(node.input) + list(node.output)}
    return names | {v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)} | {
        t.name for t in graph.initializer}


def fuse(featurizer: Any, acoustic_model: Any, stride: int) -> Any:
    """One graph from audio to log-probabilities: ``audio_signal`` float32 ``[B, S]`` and ``length`` int64 ``[B]``
    in; the acoustic model's outputs and ``encoded_lengths`` int64 ``[B]`` (the model's own length output, or
    ``ceil(features_length / stride)``) out. The model's feature input (rank 3) takes ``features``, its length
    input (rank 1, when it has one) ``features_length``. The featurizer's names get the prefix ``featurizer/``.

    The result keeps the acoustic model's opset and IR version: the featurizer is relabelled to the model's opset
    when its ops read the same there (they do from opset 16 on), else the older of the two is converted up
    (``onnx.version_converter``). ``acoustic_model`` itself is left unchanged."""
    import onnx
    from onnx import TensorProto, compose, helper

    if stride < 1:
        raise ValidationError(f"the time stride must be a positive integer, not {stride}")
    face = acoustic_interface(acoustic_model)
    _require(face)
    n_mels = _dims(featurizer.graph.output[0])[1]
    want = _dims(face.features)[1]
    if isinstance(want, int) and want > 0 and isinstance(n_mels, int) and want != n_mels:
        raise ValidationError(f"the graph expects {want} features but the preprocessor makes {n_mels}",
                              hint="the model config's preprocessor must be the one the model was trained with")

    am = onnx.ModelProto()
    am.CopyFrom(acoustic_model)
    feat = compose.add_prefix(featurizer, "featurizer/")
    if _opset(feat) > _opset(am) and not _same_ops(feat, _opset(feat), _opset(am)):
        am = _set_opset(am, _opset(feat))
    feat = _set_opset(feat, _opset(am))
    ir = max(am.ir_version, feat.ir_version)
    am.ir_version = feat.ir_version = ir
    features, frames_len = "featurizer/features", "featurizer/features_length"
    io_map = [(features, face.features.name)]
    if face.features.type.tensor_type.elem_type != TensorProto.FLOAT:
        cast = helper.make_node("Cast", [features], [features + "_cast"], name="featurizer/cast_features",
                                to=face.features.type.tensor_type.elem_type)
        feat.graph.node.append(cast)
        feat.graph.output.append(helper.make_tensor_value_info(features + "_cast", cast.attribute[0].i, None))
        io_map = [(features + "_cast", face.features.name)]
    if face.length is not None:
        source = frames_len
        if face.length.type.tensor_type.elem_type != TensorProto.INT64:
            source = frames_len + "_cast"
            feat.graph.node.append(helper.make_node("Cast", [frames_len], [source], name="featurizer/cast_length",
                                                    to=face.length.type.tensor_type.elem_type))
            feat.graph.output.append(helper.make_tensor_value_info(source, face.length.type.tensor_type.elem_type,
                                                                   ["batch"]))
        io_map.append((source, face.length.name))
    fused = compose.merge_models(feat, am, io_map=io_map, producer_name="servicemaker",
                                 doc_string="NeMo featurizer fused with a CTC acoustic model")
    graph = fused.graph
    keep = [o for o in graph.output if o.name in {v.name for v in am.graph.output}]
    del graph.output[:]
    graph.output.extend(keep)
    # the model's own tensors that carry the names the fused graph gives out move aside
    am_lengths = face.encoded_lengths.name if face.encoded_lengths is not None else None
    for name in ("audio_signal", "length", "encoded_lengths"):
        taken = _names(graph)
        if (name in taken and name != am_lengths) or name == am_lengths != "encoded_lengths":
            fresh = next(f"am/{name}_{i}" for i in range(len(taken) + 1) if f"am/{name}_{i}" not in taken)
            _rename(graph, name, fresh)
            am_lengths = fresh if name == am_lengths else am_lengths
    _rename(graph, "featurizer/audio_signal", "audio_signal")
    _rename(graph, "featurizer/length", "length")
    if face.encoded_lengths is not None:
        old = am_lengths
        if old != "encoded_lengths":
            _rename(graph, old, "encoded_lengths")
        if face.encoded_lengths.type.tensor_type.elem_type != TensorProto.INT64:
            _rename(graph, "encoded_lengths", "am/encoded_lengths")
            graph.node.append(helper.make_node("Cast", ["am/encoded_lengths"], ["encoded_lengths"],
                                               name="fuse/cast_encoded_lengths", to=TensorProto.INT64))
            for o in graph.output:
                if o.name == "am/encoded_lengths":
                    o.CopyFrom(helper.make_tensor_value_info("encoded_lengths", TensorProto.INT64, ["batch"]))
    else:
        graph.initializer.extend([onnx.numpy_helper.from_array(np.array(stride - 1, np.int64), "fuse/stride_m1"),
                                  onnx.numpy_helper.from_array(np.array(stride, np.int64), "fuse/stride")])
        graph.node.append(helper.make_node("Add", [frames_len, "fuse/stride_m1"], ["fuse/frames_rounded_up"],
                                           name="fuse/round_up"))
        graph.node.append(helper.make_node("Div", ["fuse/frames_rounded_up", "fuse/stride"], ["encoded_lengths"],
                                           name="fuse/encoded_lengths"))
        graph.output.append(helper.make_tensor_value_info("encoded_lengths", TensorProto.INT64, ["batch"]))
    fused.ir_version = ir
    onnx.checker.check_model(fused)
    return fused
