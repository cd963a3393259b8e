"""svc-build scans every ONNX graph without loading it (servicemaker.onnx_scan): structure, the pipeline's
signature, external data; bounded memory; onnx itself as the oracle of what the scan reads."""

from __future__ import annotations

import io
import random
import tarfile
import tracemalloc
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from servicemaker import onnx_scan
from servicemaker.build import BuildOptions, build
from servicemaker.cli.build import app as build_app
from servicemaker.deploy import graph as graphs
from servicemaker.eff import EffReader, KeyRing, onnx_tar
from servicemaker.errors import ValidationError, WrongKeyError
from servicemaker.keys import Secret, parse_archive_arg
from servicemaker.pipelines import REGISTRY
from servicemaker.samples import models
from servicemaker.samples.export import Artifact, nlp_export, write_export

from conftest import CIPHER_ID, listing

INPUTS = {name: [f"{name}.riva"] for name in REGISTRY}
INPUTS["speech_synthesis"] = ["fastpitch.riva", "hifigan.riva"]
INPUTS["speech_recognition_offline"] = ["speech_recognition.riva"]
EXPORTS = ["text_classification", "token_classification", "intent_slot", "punctuation", "qa", "speech_recognition",
           "fastpitch", "hifigan"]
ENCODED = ("input_ids", "token_type_ids", "attention_mask")
PREFIX = "x: not a usable ONNX model: "


def opts(pipeline, out, inputs):
    return BuildOptions(pipeline=pipeline, output=parse_archive_arg(str(out)),
                        inputs=[parse_archive_arg(str(i)) for i in inputs])


def graph_of(export, name="model_graph.onnx") -> bytes:
    with EffReader(export) as r:
        return r.read_bytes(name, max_bytes=1 << 30)


def scan(data: bytes, size: int | None = None) -> onnx_scan.GraphScan:
    return onnx_scan.scan_stream(io.BytesIO(data), "x", size)


def problem(data: bytes) -> str:
    with pytest.raises(ValidationError) as err:
        scan(data)
    assert str(err.value).startswith(PREFIX), str(err.value)
    return str(err.value)[len(PREFIX):]


def model(nodes, inputs, outputs, initializers=(), opset=17, **kw) -> onnx.ModelProto:
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(initializers)),
                             opset_imports=[helper.make_opsetid("", opset)], **kw)


def nlp_graph(inputs=ENCODED, outputs=None) -> bytes:
    """An NLP-shaped graph (never run by svc-build): int64 [batch, seq] inputs, each output cast from the first."""
    outputs = outputs or {"logits": (TensorProto.FLOAT, ["batch", 3])}
    return model([helper.make_node("Cast", [inputs[0]], [name], to=dtype) for name, (dtype, _) in outputs.items()],
                 [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in inputs],
                 [helper.make_tensor_value_info(n, dt, shape) for n, (dt, shape) in outputs.items()]
                 ).SerializeToString()


def text_export(path, graph: bytes, graph_name="model_graph.onnx"):
    vocab = "\n".join(models.tiny_vocab()) + "\n"
    return nlp_export(path, "TextClassificationModel", graph, vocab=vocab, lm_config="{}",
                      labels={"class_labels_file": ["a", "b", "c"]}, pretrained_model_name="tiny-bert",
                      graph_name=graph_name)


def with_graph(src, dst, graph: bytes):
    """``src`` (a plain export) with its model_graph.onnx replaced."""
    with EffReader(src) as r:
        arts = [Artifact(n, graph if n == "model_graph.onnx" else r.read_bytes(n), dict(p))
                for n, p in r.artifacts.items()]
        obj_cls = r.metadata["obj_cls"]
    return write_export(dst, obj_cls, arts)


def assert_like_onnx(got: onnx_scan.GraphScan, data: bytes) -> None:
    """The scan reads what onnx reads."""
    m = onnx.load_from_string(data)
    assert got.signature() == graphs.signature(m, "x")
    assert got.ir_version == m.ir_version and got.opsets == {o.domain: o.version for o in m.opset_import}
    assert got.node_count == len(m.graph.node)
    assert got.op_types == dict(Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                                        for n in m.graph.node))
    assert got.initializers == {t.name for t in m.graph.initializer}
    assert [v.name for v in got.inputs] == [v.name for v in m.graph.input]
    assert got.size == len(data)


# -- the scan against onnx ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("export", EXPORTS)
def test_every_tiny_graph_scans_as_onnx_reads_it(tiny_dir, export):
    data = graph_of(tiny_dir / f"{export}.riva")
    got = scan(data, len(data))
    assert_like_onnx(got, data)
    assert got.external_data == () and got.node_count > 0


def test_scan_reads_what_onnx_reads_of_odd_interfaces():
    """Unknown dims, no shape, an initializer listed as input, a custom domain, Constant and If attributes."""
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    then = helper.make_graph([helper.make_node("Identity", ["w"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.zeros(4, np.int64))),
             helper.make_node("If", ["flag"], ["branch"], then_branch=then, else_branch=then),
             helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("Custom", ["y"], ["z"], domain="com.example")]
    m = model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [None, "n", 2]),
                      helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
                      helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3])],
              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None),
               helper.make_tensor_value_info("c", TensorProto.INT64, [4])], [w])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    data = m.SerializeToString()
    got = scan(data)
    assert_like_onnx(got, data)
    assert got.op_types == {"Constant": 1, "If": 1, "MatMul": 1, "com.example::Custom": 1}
    assert got.signature().inputs[0].shape == ("dim0", "n", 2)


def test_interface_model_reads_as_the_loaded_model_for_acoustic_checks(tiny_dir):
    """The weightless model a scan gives (``as_model``) meets the ASR family's checks as the loaded graph does."""
    from servicemaker.speech.acoustic import acoustic_interface

    for export in ("speech_recognition", "hifigan", "text_classification"):
        data = graph_of(tiny_dir / f"{export}.riva")
        assert acoustic_interface(scan(data).as_model()).problems == acoustic_interface(
            onnx.load_from_string(data)).problems
    seq = model([helper.make_node("SequenceLength", ["s"], ["n"])],
                [helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)],
                [helper.make_tensor_value_info("n", TensorProto.INT64, [])])
    with pytest.raises(ValidationError, match="^x: graph input s is a sequence; a network takes and gives tensors$"):
        scan(seq.SerializeToString()).as_model()


def test_chunking_does_not_change_the_scan(tiny_dir):
    data = graph_of(tiny_dir / "qa.riva")
    rng = random.Random(7)
    scanner = onnx_scan.GraphScanner("x", len(data))
    k = 0
    while k < len(data):
        step = rng.choice((1, 2, 3, 5, 11, 64, 4096))
        scanner.feed(data[k:k + step])
        k += step
    assert scanner.finish() == scan(data)


# -- structure ----------------------------------------------------------------------------------------------------------

def test_empty_graph_file():
    assert problem(b"") == "the file is empty"


def test_truncated_anywhere_in_the_graph_is_refused(tiny_dir):
    data = graph_of(tiny_dir / "text_classification.riva")
    cuts = sorted({1, 2, 3, 10, 100, len(data) // 3, len(data) // 2, len(data) - 1}
                  | set(range(5, len(data), max(1, len(data) // 37))))
    for cut in cuts:
        with pytest.raises(ValidationError) as err:
            scan(data[:cut])
        assert str(err.value).startswith(PREFIX), (cut, str(err.value))
    # the size known (an archive member's), a length past it is caught as it is read
    with pytest.raises(ValidationError, match=r"truncated: ModelProto.graph at byte \d+ runs to byte \d+, past the "
                                              r"end of the file \(\d+ bytes\)"):
        scan(data[: len(data) // 2], len(data) // 2)
    msg = problem(data[: len(data) // 2])
    assert msg.startswith(f"truncated: the file ends at byte {len(data) // 2} inside ModelProto > graph (GraphProto)")


@pytest.mark.parametrize("seed", range(12))
def test_random_garbage_is_refused(seed):
    data = random.Random(seed).randbytes(random.Random(seed).choice((1, 7, 100, 5000)))
    with pytest.raises(ValidationError) as err:
        scan(data)
    assert str(err.value).startswith(PREFIX)


@pytest.mark.parametrize("data, message", [
    (b"\x08" + b"\xff" * 10 + b"\x01", "byte 1: a varint longer than 10 bytes inside ModelProto"),
    (b"\x0b\x00", "byte 0: wire type 3 inside ModelProto is not valid protobuf"),
    (b"\x00\x01", "byte 0: field number 0 inside ModelProto is not valid protobuf"),
    (b"\x08\x08\x3a\x03\x0a\x05\x00",
     "byte 4: GraphProto.node runs to byte 11, past the end of the GraphProto holding it (byte 7, in ModelProto > "
     "graph (GraphProto))"),
    (b"\x08\x08\x3d\x00\x00\x00\x00", "byte 2: ModelProto.graph (field 7) is a 32-bit value, expected "
                                      "length-delimited: this is not an ONNX model"),
    (b"\x08\x08\x3a\x02\x08\x01", "byte 4: GraphProto.node (field 1) is a varint, expected length-delimited"),
])
def test_wire_format_errors_are_named(data, message):
    assert problem(data) == message


@pytest.mark.parametrize("make, message", [
    # a graph saved without its model: GraphProto.node is field 1, ModelProto's ir_version a varint
    (lambda: helper.make_graph([RELU], "g", [X], [Y]), "byte 0: ModelProto.ir_version (field 1) is "
                                                       "length-delimited, expected a varint: this is not an ONNX model"),
    # a tensor: its dims read as ir_version, its name (field 8) as an opset_import holding bytes "t"
    (lambda: numpy_helper.from_array(np.ones(3, np.float32), "t"),
     "byte 6: wire type 4 inside ModelProto > opset_import (OperatorSetIdProto) is not valid protobuf"),
    # fields ModelProto does not read (producer_name, model_version) are skipped: no ir_version, no graph
    (lambda: onnx.ModelProto(producer_name="p", model_version=3), "this is not an ONNX model\n"
     "  - it has no ir_version (ModelProto field 1)\n  - it has no graph (ModelProto field 7)"),
])
def test_valid_protobuf_that_is_not_a_model(make, message):
    assert problem(make().SerializeToString()) == message


X = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
RELU = helper.make_node("Relu", ["x"], ["y"])


@pytest.mark.parametrize("make, violations", [
    (lambda: model([], [X], [Y]), ["the graph has no nodes", "graph output y is not produced by any node"]),
    (lambda: model([helper.make_node("Constant", [], ["y"], value_float=1.0)], [], [Y]),
     ["the graph has no inputs"]),
    (lambda: model([RELU], [X], []), ["the graph has no outputs"]),
    (lambda: model([RELU], [helper.make_tensor_value_info("", TensorProto.FLOAT, [1])], [Y]),
     ["graph input #1 has no name"]),
    (lambda: _no_opsets(), ["it imports no operator set (opset_import is empty)"]),
])
def test_incomplete_graphs_list_every_problem(make, violations):
    with pytest.raises(ValidationError) as err:
        scan(make().SerializeToString())
    assert err.value.violations == violations
    assert str(err.value).startswith(PREFIX + "the graph is not complete")


def _no_opsets():
    m = model([RELU], [X], [Y])
    del m.opset_import[:]
    return m


# -- memory -------------------------------------------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def write_big_model(path, tensors: int, tensor_bytes: int) -> None:
    """An ONNX model holding ``tensors`` float initializers of ``tensor_bytes`` each in raw_data, written as
    protobuf concatenation (a message's fields may come in several pieces) so that it never sits in memory."""
    n = tensor_bytes // 4
    inits = [f"w{i}" for i in range(tensors)]
    nodes = [helper.make_node("Add", ["x" if i == 0 else f"s{i - 1}", w], [f"s{i}"]) for i, w in enumerate(inits)]
    small = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                              [helper.make_tensor_value_info(f"s{tensors - 1}", TensorProto.FLOAT, [n])])
    heads = [TensorProto(name=w, data_type=TensorProto.FLOAT, dims=[n]).SerializeToString() + b"\x4a" + _varint(4 * n)
             for w in inits]                                      # TensorProto field 9 (raw_data), length-delimited
    graph_len = len(small.SerializeToString()) + sum(1 + len(_varint(len(h) + 4 * n)) + len(h) + 4 * n for h in heads)
    tail = onnx.ModelProto(opset_import=[helper.make_opsetid("", 17)]).SerializeToString()
    zeros = bytes(1 << 20)
    with open(path, "wb") as fh:
        fh.write(b"\x08\x08\x3a" + _varint(graph_len) + small.SerializeToString())   # ir_version 8, graph (field 7)
        for h in heads:
            fh.write(b"\x2a" + _varint(len(h) + 4 * n) + h)                            # GraphProto field 5
            left = 4 * n
            while left:
                left -= fh.write(zeros[:min(left, len(zeros))])
        fh.write(tail)


def test_big_model_builder_makes_what_onnx_reads(tmp_path):
    write_big_model(tmp_path / "m.onnx", 3, 4096)
    data = (tmp_path / "m.onnx").read_bytes()
    assert_like_onnx(scan(data), data)
    assert np.array_equal(numpy_helper.to_array(onnx.load_from_string(data).graph.initializer[2]),
                          np.zeros(1024, np.float32))


def test_large_initializers_are_scanned_in_bounded_memory(tmp_path):
    path = tmp_path / "big.onnx"
    write_big_model(path, 4, 50 << 20)
    size = path.stat().st_size
    assert size > 200 << 20
    tracemalloc.start()
    try:
        with open(path, "rb") as fh:
            got = onnx_scan.scan_stream(fh, "big.onnx", size)
        with open(path, "rb") as fh:   # as svc-build copies it: read through, scanned on the way
            through = onnx_scan.ScanningReader(fh, onnx_scan.GraphScanner("big.onnx", size))
            while through.read(1 << 20):
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.initializers == {"w0", "w1", "w2", "w3"} and got.node_count == 4
    assert through.scanner.finish() == got
    assert peak < 4 << 20, f"peak {peak} bytes scanning {size} bytes"


# -- external data ------------------------------------------------------------------------------------------------------

def _external(tmp_path):
    w = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "w")
    m = model([helper.make_node("MatMul", ["x", "w"], ["y"])],
              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])], [w])
    src = tmp_path / "src"
    src.mkdir()
    onnx.save(m, src / "model.onnx", save_as_external_data=True, location="model.data", size_threshold=0)
    return src / "model.onnx"


def test_external_data_needs_its_files(tmp_path):
    graph = _external(tmp_path)
    got = scan(graph.read_bytes())
    assert got.external_data == ("model.data",)
    with pytest.raises(ValidationError, match=r"x: the graph keeps tensors in external data \(model.data\), "
                                              "which a plain .onnx artifact cannot carry"):
        got.check_external(None)
    packed = onnx_tar.pack(graph, tmp_path / "model.onnx.tar")
    with open(packed, "rb") as fh:
        assert onnx_scan.scan_onnx_tar(fh, "t").external_data == ("model.data",)
    bare = io.BytesIO()   # the same tar without its data file
    with tarfile.open(packed) as tf, tarfile.open(fileobj=bare, mode="w") as out:
        info = tf.getmember("model.onnx")
        out.addfile(info, tf.extractfile(info))
    bare.seek(0)
    with pytest.raises(ValidationError, match=r"t: model.onnx: the graph's external data model.data is not "
                                              "in the archive"):
        onnx_scan.scan_onnx_tar(bare, "t")


def test_onnx_tar_export_builds_and_plain_external_graph_does_not(tmp_path):
    graph = _external(tmp_path)
    (tmp_path / "w").mkdir()
    data = nlp_graph()
    m = onnx.load_from_string(data)
    m.graph.initializer.append(numpy_helper.from_array(np.ones(64, np.float32), "unused"))
    onnx.save(m, tmp_path / "w" / "model.onnx", save_as_external_data=True, location="model.data", size_threshold=0)
    packed = onnx_tar.pack(tmp_path / "w" / "model.onnx", tmp_path / "nlp.onnx.tar").read_bytes()
    src = text_export(tmp_path / "tar.riva", packed, graph_name="model_graph.onnx.tar")
    build(opts("text_classification", tmp_path / "tar.rmir", [src]))
    src = text_export(tmp_path / "ext.riva", graph.read_bytes())
    with pytest.raises(ValidationError) as err:
        build(opts("text_classification", tmp_path / "ext.rmir", [src]))
    assert str(err.value).startswith(f"{src}: model_graph.onnx: the graph keeps tensors in external data")
    assert ".onnx.tar" in err.value.hint
    assert not (tmp_path / "ext.rmir").exists()


# -- svc-build ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pipeline", list(REGISTRY))
def test_every_tiny_export_still_builds(tiny, pipeline):
    build(opts(pipeline, tiny / f"{pipeline}.rmir", [tiny / i for i in INPUTS[pipeline]]))


def test_truncated_graph_refused_before_anything_is_written(tiny_dir, tmp_path):
    data = graph_of(tiny_dir / "text_classification.riva")
    src = with_graph(tiny_dir / "text_classification.riva", tmp_path / "cut.riva", data[: len(data) // 2])
    before = listing(tmp_path)
    with pytest.raises(ValidationError) as err:
        build(opts("text_classification", tmp_path / "o.rmir", [src]))
    assert str(err.value).startswith(f"{src}: model_graph.onnx: not a usable ONNX model: truncated")
    assert err.value.exit_code == 5 and "re-export" in err.value.hint
    assert listing(tmp_path) == before


def test_svc_build_cli_names_archive_artifact_and_problem(runner, tmp_path):
    src = text_export(tmp_path / "empty.riva", b"")
    result = runner.invoke(build_app, ["text_classification", str(tmp_path / "o.rmir"), str(src)])
    assert result.exit_code == 5
    lines = result.output.splitlines()
    at = next(k for k, line in enumerate(lines) if line.startswith("error:"))
    assert lines[at] == f"error: {src}: model_graph.onnx: not a usable ONNX model: the file is empty"
    assert lines[at + 1].startswith("hint: re-export the model to ONNX")
    assert "Traceback" not in result.output and not (tmp_path / "o.rmir").exists()


@pytest.mark.parametrize("graph, violations", [
    (nlp_graph(inputs=("ids", "token_type_ids", "attention_mask")),
     ["graph input ids is not one the tokenizer gives (input_ids, token_type_ids, attention_mask, "
      "row_text)",
      "graph has no input_ids input"]),
    (nlp_graph(outputs={"logits": (TensorProto.FLOAT, ["batch", "seq", 3])}),
     ["graph output logits has rank 3, expected 2"]),
    (nlp_graph(outputs={"scores": (TensorProto.FLOAT, ["batch", 3])}), ["graph has no output logits (it has scores)"]),
    (nlp_graph(outputs={"logits": (TensorProto.INT64, ["batch", 3])}), ["graph output logits is INT64, expected FP32"]),
    (nlp_graph(outputs={"logits": (TensorProto.FLOAT, [2, 3])}),
     ["logits has a fixed batch size 2; export with a dynamic batch axis"]),
])
def test_nlp_graph_that_does_not_fit_is_refused_at_build(runner, tmp_path, graph, violations):
    src = text_export(tmp_path / "odd.riva", graph)
    with pytest.raises(ValidationError) as err:
        build(opts("text_classification", tmp_path / "o.rmir", [src]))
    assert str(err.value).startswith(f"{src}: model_graph.onnx does not fit pipeline text_classification")
    assert err.value.violations == violations
    assert not (tmp_path / "o.rmir").exists()
    result = runner.invoke(build_app, ["text_classification", str(tmp_path / "o.rmir"), str(src)])
    assert result.exit_code == 5 and "Traceback" not in result.output
    assert violations[0] in result.output


def test_the_fitting_nlp_graph_builds(tmp_path):
    build(opts("text_classification", tmp_path / "o.rmir", [text_export(tmp_path / "ok.riva", nlp_graph())]))


def test_asr_graph_that_is_not_an_acoustic_model_is_refused(tiny_dir, tmp_path):
    flat = model([helper.make_node("Unsqueeze", ["audio_signal", "axes"], ["logprobs"])],
                 [helper.make_tensor_value_info("audio_signal", TensorProto.FLOAT, ["batch", "time"])],
                 [helper.make_tensor_value_info("logprobs", TensorProto.FLOAT, ["batch", "time", 29])],
                 [numpy_helper.from_array(np.array([2], np.int64), "axes")])
    src = with_graph(tiny_dir / "speech_recognition.riva", tmp_path / "flat.riva", flat.SerializeToString())
    with pytest.raises(ValidationError) as err:
        build(opts("speech_recognition", tmp_path / "o.rmir", [src]))
    assert str(err.value).startswith(f"{src}: model_graph.onnx does not fit pipeline speech_recognition")
    assert err.value.violations[0].startswith("the graph has no rank-3 float input [batch, features, frames]")
    assert "nemo2riva" in err.value.hint and not (tmp_path / "o.rmir").exists()


def test_tts_graphs_are_checked_for_structure(tiny_dir, tmp_path):
    src = with_graph(tiny_dir / "hifigan.riva", tmp_path / "h.riva", b"\x08\x08garbage")
    with pytest.raises(ValidationError) as err:
        build(opts("speech_synthesis", tmp_path / "o.rmir", [tiny_dir / "fastpitch.riva", src]))
    assert str(err.value).startswith(f"{src}: model_graph.onnx: not a usable ONNX model")


def test_a_wrong_key_is_reported_before_the_garbled_graph(tmp_path, salt, salt_table):
    src = models.tiny_nlp_export("text_classification", tmp_path / "enc.riva", key="tlt_encode",
                                 legacy=(CIPHER_ID, salt))
    with EffReader(src, KeyRing(key=Secret("not-the-key"), salts=salt_table)) as r:
        stream = r.open("model_graph.onnx")
        through = onnx_scan.ScanningReader(stream, onnx_scan.GraphScanner("x", stream.size))
        with pytest.raises(WrongKeyError):
            while through.read(1 << 16):
                pass
