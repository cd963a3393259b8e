"""The speech-synthesis graphs as NeMo 3.0 exports them (``fixtures/tts``, made by NeMo's own ``export()``): the
ragged export's optionals removed (ONNX Runtime refuses it as shipped), its batching loop cut out for TensorRT,
FastPitch's padding leak (NeMo's own batched output differs from alone) masked so a sentence batched equals it
alone, and the interface checks that refuse graphs which are not NeMo's FastPitch or HiFi-GAN."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from servicemaker.deploy import graph as graphs
from servicemaker.onnx_scan import GraphTensor, Signature
from servicemaker.speech import synthesis, tts_feeds
from tts_fixtures import FIXTURES, reference

PAD = 43  # the chars tokenizer's <pad> (43 symbols before it)


def _load(name: str) -> onnx.ModelProto:
    return onnx.load(str(FIXTURES / f"{name}.onnx"))


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _ragged(seqs, pitch=0.0, pace=1.0) -> dict:
    text = np.concatenate(seqs).astype(np.int64)
    return {"text": text, "pitch": np.full(len(text), pitch, np.float32), "pace": np.full(len(text), pace, np.float32),
            "volume": np.ones(len(text), np.float32),
            "batch_lengths": np.cumsum([0] + [len(s) for s in seqs]).astype(np.int32)}


def _padded(seqs, pitch=0.0, pace=1.0, volume=True) -> dict:
    width = max(len(s) for s in seqs)
    text = np.full((len(seqs), width), PAD, np.int64)
    for i, s in enumerate(seqs):
        text[i, :len(s)] = s
    feed = {"text": text, "pitch": np.full(text.shape, pitch, np.float32), "pace": np.full(text.shape, pace, np.float32)}
    if volume:
        feed["volume"] = np.ones(text.shape, np.float32)
    return feed


def test_nemo_ragged_export_is_refused_as_shipped_and_runs_once_its_optionals_are_gone():
    model = _load("fastpitch_ragged")
    with pytest.raises(Exception, match="Invalid tensor data type 0"):
        _session(model)
    assert graphs.remove_optionals(model) > 0
    assert not any(n.op_type.startswith("Optional") for n in model.graph.node)
    onnx.checker.check_model(model, full_check=True)
    ref = reference()
    out = _session(model).run(["spect", "num_frames"], _ragged([ref["tokens_0"]]))
    assert int(out[1][0]) == int(ref["frames"][0])
    # NeMo's own generate_spectrogram for the same symbols
    np.testing.assert_allclose(out[0][0], ref["spect_0"], atol=1e-5)
    assert graphs.remove_optionals(model) == 0  # nothing left to do the second time


def test_the_batching_loop_is_cut_out_for_tensorrt():
    model = _load("fastpitch_ragged")
    graphs.remove_optionals(model)
    ragged = _session(model)
    assert synthesis.unragged(model)
    assert [i.name for i in model.graph.input] == ["text", "pitch", "pace", "volume"]
    assert not any(n.op_type == "Loop" for n in model.graph.node)
    padded = _session(model)
    ref = reference()
    seqs = [ref[f"tokens_{i}"] for i in range(5)]
    for seq in seqs:
        a = ragged.run(["spect", "num_frames"], _ragged([seq], pitch=0.5, pace=1.2))
        b = padded.run(["spect", "num_frames"], _padded([seq], pitch=0.5, pace=1.2))
        assert a[1].tolist() == b[1].tolist() and np.array_equal(a[0], b[0])
    assert not synthesis.unragged(_load("fastpitch_plain"))  # no loop: nothing to cut


def test_nemo_batches_leak_padding_and_the_mask_makes_a_batch_equal_alone():
    """NeMo's own padded forward gives other frame counts than alone (its fixture); the exported graphs too. With
    mask_padding, every sentence of a mixed-length batch equals its run alone, and alone is unchanged bit for bit."""
    ref = reference()
    assert ref["batched_frames"].tolist() != ref["frames"].tolist()  # NeMo itself, padded batch vs alone
    seqs = [ref[f"tokens_{i}"] for i in range(5)]
    for name, feed in (("fastpitch_ragged", _ragged), ("fastpitch_plain", lambda s: _padded(s, volume=False))):
        model = _load(name)
        graphs.remove_optionals(model)
        before = _session(model)
        leaky = before.run(["num_frames"], feed(seqs))[0].tolist()
        alone = [int(before.run(["num_frames"], feed([s]))[0][0]) for s in seqs]
        assert leaky != alone, name
        assert synthesis.mask_padding(model) == {"masked_convolutions": 6, "masked_embeddings": 1}
        onnx.checker.check_model(model)
        after = _session(model)
        spect, frames = after.run(["spect", "num_frames"], feed(seqs))
        for i, s in enumerate(seqs):
            one, n = after.run(["spect", "num_frames"], feed([s]))
            assert int(frames[i]) == int(n[0]) == alone[i]
            assert np.abs(spect[i, :, :int(n[0])] - one[0, :, :int(n[0])]).max() < 1e-5
            assert np.array_equal(one, before.run(["spect"], feed([s]))[0])


def test_measured_batching():
    ref = reference()
    seqs = [ref[f"tokens_{i}"].tolist() for i in range(5)]
    info = {"layout": "ragged", "inputs": ["text", "pitch", "pace", "volume", "batch_lengths"], "speaker": False}
    model = _load("fastpitch_ragged")
    graphs.remove_optionals(model)
    assert tts_feeds.measure_batching(model, seqs, info, PAD) == "single"   # the leak, unmasked
    synthesis.mask_padding(model)
    assert tts_feeds.measure_batching(model, seqs, info, PAD) == "any"


def test_embedding_rows_and_hop():
    assert synthesis.embedding_rows(_load("fastpitch_ragged")) == 45   # 43 symbols, <pad>, <oov>: NeMo's table
    assert synthesis.embedding_rows(_load("fastpitch_plain")) == 45
    assert synthesis.hop_of(_load("hifigan"), 80) == 256


def _sig(inputs, outputs) -> Signature:
    return Signature(tuple(GraphTensor(*t) for t in inputs), tuple(GraphTensor(*t) for t in outputs))


F, I64, I32 = "TYPE_FP32", "TYPE_INT64", "TYPE_INT32"
OUTS = (("spect", F, ("b", 80, "t")), ("num_frames", I64, ("b",)))


@pytest.mark.parametrize("inputs,outputs,problem", [
    ((("tokens", I64, ("n",)),), OUTS, "the graph has no input 'text'"),
    ((("text", F, ("n",)), ("pitch", F, ("n",)), ("pace", F, ("n",)), ("volume", F, ("n",)),
      ("batch_lengths", I32, ("b",))), OUTS, "input text is FP32, expected INT64"),
    ((("text", I64, ("n",)), ("pitch", F, ("n",)), ("pace", F, ("n",)), ("volume", F, ("n",))), OUTS,
     "a ragged export (text [N]) needs input batch_lengths"),
    ((("text", I64, ("b", "n")), ("pitch", F, ("b", "n"))), OUTS, "the graph has no input 'pace'"),
    ((("text", I64, ("b", "n")), ("pitch", F, ("b", "n")), ("pace", F, ("b", "n"))),
     (("spect", F, ("b", 80, "t")),), "needs outputs spect and num_frames"),
    ((("text", I64, ("b", "n")), ("pitch", F, ("b", "n")), ("pace", F, ("b", "n")), ("emotion", F, ("b",))), OUTS,
     "inputs emotion are not FastPitch's"),
])
def test_fastpitch_interface_problems(inputs, outputs, problem):
    info, problems = synthesis.fastpitch_interface(_sig(inputs, outputs))
    assert any(problem in p for p in problems), problems


def test_nemo_exports_fit():
    for name, layout, mels in (("fastpitch_ragged", "ragged", None), ("fastpitch_plain", "padded", 80)):
        info, problems = synthesis.fastpitch_interface(graphs.signature(_load(name), name))
        assert problems == [] and info["layout"] == layout and info["n_mels"] == mels
    info, problems = synthesis.hifigan_interface(graphs.signature(_load("hifigan"), "h"))
    assert problems == [] and info == {"input": "spec", "output": "audio", "n_mels": 80}


def test_hifigan_interface_problems():
    two = _sig((("spec", F, ("b", 80, "t")), ("x", F, ("b",))), (("audio", F, ("b", 1, "s")),))
    assert "one spectrogram" in synthesis.hifigan_interface(two)[1][0]
    stereo = _sig((("spec", F, ("b", 80, "t")),), (("audio", F, ("b", 2, "s")),))
    assert "2 channels" in synthesis.hifigan_interface(stereo)[1][0]
    flat = _sig((("spec", F, ("b", "t")),), (("audio", F, ("b", "s")),))
    assert "expected FP32 [B, n_mels, T]" in synthesis.hifigan_interface(flat)[1][0]


def test_an_optional_without_a_loop_is_typed_and_removed():
    """A graph that wraps an input in Optional and branches on OptionalHasElement: the branch taken is kept."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    then = helper.make_graph([helper.make_node("OptionalGetElement", ["opt"], ["got"]),
                              helper.make_node("Neg", ["got"], ["then_out"])], "then", [],
                             [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, ["n"])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["else_out"])], "else", [],
                              [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, ["n"])])
    nodes = [helper.make_node("Optional", ["x"], ["opt"], type=helper.make_optional_type_proto(
                 helper.make_tensor_type_proto(TensorProto.FLOAT, ["n"]))),
             helper.make_node("OptionalHasElement", ["opt"], ["has"]),
             helper.make_node("If", ["has"], ["y"], then_branch=then, else_branch=other)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 18)])
    assert graphs.remove_optionals(model) >= 3
    out = _session(model).run(None, {"x": np.array([1.0, -2.0], np.float32)})[0]
    assert out.tolist() == [-1.0, 2.0]
