"""The attention plugin: multi-head self-attention → ONNX Runtime's MultiHeadAttention on the CPU flavor, on BERT
graphs from both PyTorch exporters (eager and SDPA attention, with and without a mask), hand-written near misses
left alone and reported, and an INT8 compile that keeps the Q/K/V projections quantized."""

from __future__ import annotations

import io
import warnings
from collections import Counter

import numpy as np
import onnx
import pytest

from servicemaker.deploy import graph as graphs
from servicemaker.deploy.optimize import CompileOptions, compile_network, flavor_for, fuse, run

from test_plugins import EXPORTS, LAYERS, export_bert, feeds


def ops(model) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


@pytest.fixture(scope="module", params=sorted(EXPORTS))
def exported(request):
    return request.param, onnx.shape_inference.infer_shapes(graphs.fold_constants(export_bert(*EXPORTS[request.param])))


def test_cpu_targets_take_the_contrib_flavor_and_tensorrt_the_standard_one():
    assert flavor_for("onnxruntime") == flavor_for("onnxruntime-python") == "ort"
    assert flavor_for("tensorrt") == "onnx"
    assert flavor_for("onnxruntime", "onnx") == "onnx"


def test_every_layer_becomes_one_multi_head_attention(exported):
    name, model = exported
    fused, report = fuse(model, "ort_contrib", feeds())
    entry = report["plugins"]["attention"]
    assert entry["status"] == "ok" and entry["fused"] == LAYERS and entry["partial"] == [], (name, entry)
    counts = ops(fused)
    assert counts["MultiHeadAttention"] == LAYERS and counts["Softmax"] == 0
    heads = {a.i for n in fused.graph.node if n.op_type == "MultiHeadAttention" for a in n.attribute
             if a.name == "num_heads"}
    assert heads == {2}
    onnx.checker.check_model(fused)
    for before, after in zip(run(model, feeds()), run(fused, feeds())):  # padded rows included
        np.testing.assert_allclose(after[0], before[0], atol=1e-4, rtol=1e-4)


def test_standard_flavor_keeps_the_decomposed_attention(exported):
    _, model = exported
    fused, report = fuse(model, "onnx", feeds())
    assert report["plugins"]["attention"]["status"] == "native"
    assert ops(fused)["MultiHeadAttention"] == 0 and ops(fused)["Softmax"] == LAYERS


def test_attention_without_a_mask():
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4,
                                intermediate_size=64, attn_implementation="eager"), add_pooling_layer=False).eval()

    class NoMask(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids):
            return self.bert(input_ids=input_ids)[0]

    model = _export(NoMask(), (torch.ones(2, 8, dtype=torch.long),), ["input_ids"])
    samples = [{"input_ids": f["input_ids"]} for f in feeds()]
    fused, report = fuse(model, "ort_contrib", samples)
    assert report["plugins"]["attention"]["fused"] == LAYERS and ops(fused)["MultiHeadAttention"] == LAYERS
    for before, after in zip(run(model, samples), run(fused, samples)):
        np.testing.assert_allclose(after[0], before[0], atol=1e-4, rtol=1e-4)


# --- near misses ----------------------------------------------------------------------------------------------------

def _export(module, args, names) -> onnx.ModelProto:
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, buf, input_names=names, output_names=["out"], opset_version=17,
                          dynamic_axes={n: {0: "b", 1: f"s{i}"} for i, n in enumerate(names) if n != "s"},
                          dynamo=False)
    return onnx.shape_inference.infer_shapes(graphs.fold_constants(onnx.load_from_string(buf.getvalue())))


def _attention(kind: str) -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]:
    """Hand-written attention over 2 heads of 8: ``self``, ``cross`` (K and V from a second sequence), ``scale``
    (scores divided by a tensor input), ``shared`` (the masked scores are also an output)."""
    import torch

    torch.manual_seed(0)
    proj = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(3))

    def heads(t, layer):
        return proj[layer](t).view(t.shape[0], t.shape[1], 2, 8).transpose(1, 2)

    class Attention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = proj

        def forward(self, x, y, s):
            q, k, v = heads(x, 0), heads(y if kind == "cross" else x, 1), heads(y if kind == "cross" else x, 2)
            scores = q @ k.transpose(-1, -2)
            scores = scores / s if kind == "scale" else scores / 8 ** 0.5
            probs = torch.softmax(scores, -1)
            out = (probs @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], 16)
            return (out, scores) if kind == "shared" else out

    rng = np.random.default_rng(0)
    x, y = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    model = _export(Attention(), (x, y, torch.tensor([2.83])), ["x", "y", "s"])
    kept = {i.name for i in model.graph.input}
    samples = [{k: v for k, v in {"x": rng.normal(size=(2, 5, 16)).astype(np.float32),
                                  "y": rng.normal(size=(2, 7, 16)).astype(np.float32),
                                  "s": np.array([2.83], np.float32)}.items() if k in kept}]
    return model, samples


def test_hand_written_self_attention_is_fused():
    model, samples = _attention("self")
    fused, report = fuse(model, "ort_contrib", samples, plugins=["attention"])
    assert report["plugins"]["attention"]["fused"] == 1 and ops(fused)["MultiHeadAttention"] == 1
    np.testing.assert_allclose(run(fused, samples)[0][0], run(model, samples)[0][0], atol=1e-5)


@pytest.mark.parametrize("kind, reason", [
    ("cross", "cross-attention"),
    ("scale", "not a MatMul scaled by a constant"),
    ("shared", "also read elsewhere"),
])
def test_near_misses_are_left_alone_and_reported(kind, reason):
    model, samples = _attention(kind)
    fused, report = fuse(model, "ort_contrib", samples, plugins=["attention"])
    entry = report["plugins"]["attention"]
    assert entry["fused"] == 0 and ops(fused)["MultiHeadAttention"] == 0 and ops(fused)["Softmax"] == 1
    assert len(entry["partial"]) == 1 and reason in entry["partial"][0]["reason"], entry


def test_int8_keeps_the_projections_quantized_around_the_fused_attention(tmp_path):
    model = onnx.shape_inference.infer_shapes(graphs.fold_constants(export_bert(*EXPORTS["torchscript-17-sdpa-tanh"])))
    opts = CompileOptions(target="onnxruntime", precision="int8", allow_accuracy_drop=True)
    out, report = compile_network(model, opts, feeds(4), feeds(2), tmp_path)
    counts = ops(out)
    assert counts["MultiHeadAttention"] == LAYERS
    by_output = {o: n for n in out.graph.node for o in n.output}
    for mha in (n for n in out.graph.node if n.op_type == "MultiHeadAttention"):
        for tensor in mha.input[:3]:  # q, k, v: MatMul(DQ(Q(x)), DQ(W)), their biases absorbed by the op
            matmul = by_output[tensor]
            assert matmul.op_type == "MatMul"
            assert all(by_output.get(i) is not None and by_output[i].op_type == "DequantizeLinear"
                       for i in matmul.input), matmul.name
        assert len(mha.input) >= 4 and mha.input[3]  # the projections' biases
    for before, after in zip(run(model, feeds()), run(out, feeds())):
        a, b = before[0].reshape(-1, before[0].shape[-1]), after[0].reshape(-1, after[0].shape[-1])
        cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        assert cos.mean() > 0.98
