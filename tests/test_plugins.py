"""The fusion plugins on graphs exported by both PyTorch exporters, and on hand-built near misses."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from servicemaker.deploy import graph as graphs
from servicemaker.deploy.optimize import fuse, run
from servicemaker.plugins import Fusion, registry

HIDDEN, LAYERS, SEQ = 32, 2, 12

# (exporter, opset, attention implementation, activation): the shapes BERT-family exports come in
EXPORTS = {
    "torchscript-14-eager-erf": ("torchscript", 14, "eager", "gelu"),
    "torchscript-17-sdpa-tanh": ("torchscript", 17, "sdpa", "gelu_new"),
    "dynamo-18-eager-erf": ("dynamo", 18, "eager", "gelu"),
    "dynamo-18-sdpa-tanh": ("dynamo", 18, "sdpa", "gelu_new"),
}


def export_bert(exporter: str, opset: int, attention: str, act: str) -> onnx.ModelProto:
    import io

    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, hidden_act=act,
                     attn_implementation=attention)
    bert = BertModel(cfg, add_pooling_layer=False).eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, token_type_ids, attention_mask):
            return self.bert(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)[0]

    ids = torch.ones(2, 16, dtype=torch.long)
    names = ["input_ids", "token_type_ids", "attention_mask"]
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dim = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}
            prog = torch.onnx.export(Encoder(), (ids, torch.zeros_like(ids), torch.ones_like(ids)), input_names=names,
                                     output_names=["hidden"], dynamic_shapes=(dim, dim, dim), opset_version=opset,
                                     dynamo=True, verbose=False)
            return prog.model_proto
        torch.onnx.export(Encoder(), (ids, torch.zeros_like(ids), torch.ones_like(ids)), buf, input_names=names,
                          output_names=["hidden"], dynamic_axes={n: {0: "b", 1: "s"} for n in names + ["hidden"]},
                          opset_version=opset, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def feeds(batches: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for b in range(batches):
        ids = rng.integers(5, 64, size=(3, SEQ)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[1, SEQ - 3 - b:] = 0
        out.append({"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask})
    return out


@pytest.fixture(scope="module", params=sorted(EXPORTS))
def exported(request):
    model = graphs.fold_constants(export_bert(*EXPORTS[request.param]))
    return request.param, onnx.shape_inference.infer_shapes(model)


def ops(model) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def test_standard_flavor_counts_match_the_model_structure(exported):
    name, model = exported
    fused, report = fuse(model, "onnx", feeds())
    plugins = report["plugins"]
    # one GELU per layer, one LayerNorm after the embeddings and two per layer, one attention scale per layer
    assert plugins["gelu"]["fused"] == LAYERS and plugins["gelu"]["status"] == "ok"
    assert plugins["attention_scale"]["fused"] == LAYERS
    assert ops(fused)["Gelu"] == LAYERS and "Erf" not in ops(fused) and "Tanh" not in ops(fused)
    assert ops(fused)["LayerNormalization"] == 1 + 2 * LAYERS
    assert plugins["layernorm"]["fused"] == (1 + 2 * LAYERS if "-14-" in name else 0)
    assert plugins["skip_layernorm"]["status"] == "native"  # TensorRT >= 10 fuses Add + LayerNormalization itself
    assert next(o.version for o in fused.opset_import if o.domain in ("", "ai.onnx")) == 20
    onnx.checker.check_model(fused)
    for before, after in zip(run(model, feeds()), run(fused, feeds())):
        np.testing.assert_allclose(after[0], before[0], atol=1e-4, rtol=1e-4)


def test_contrib_flavor_for_onnx_runtime(exported):
    name, model = exported
    fused, report = fuse(model, "ort_contrib", feeds())
    counts = ops(fused)
    # every residual add; the embedding sum too where the exporter wrote no fixed batch of 1 for the positions
    assert report["plugins"]["skip_layernorm"]["fused"] in (2 * LAYERS, 1 + 2 * LAYERS)
    assert counts["SkipLayerNormalization"] + counts["LayerNormalization"] == 1 + 2 * LAYERS
    gelu = counts["BiasGelu"] + counts["FastGelu"] + counts["Gelu"]
    assert gelu == LAYERS and counts["FastGelu"] == (LAYERS if "tanh" in name else 0)
    assert any(o.domain == "com.microsoft" for o in fused.opset_import)
    # the attention scale went into Q's projection weights: no scale Mul left in front of the score MatMuls
    assert report["plugins"]["attention_scale"]["fused"] == LAYERS
    assert all(v["status"] in ("ok", "native", "no match") for v in report["plugins"].values())


def test_tensorrt_plugin_flavor_carries_the_parser_attributes(exported):
    _, model = exported
    fused, report = fuse(model, "trt_plugin", feeds())
    skip = [n for n in fused.graph.node if n.op_type == "CustomSkipLayerNormPluginDynamic"]
    gelu = [n for n in fused.graph.node if n.op_type == "CustomGeluPluginDynamic"]
    assert len(skip) in (2 * LAYERS, 1 + 2 * LAYERS) and len(gelu) == LAYERS
    for node in skip + gelu:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"" and attrs["type_id"] == 0
    attrs = {a.name: helper.get_attribute_value(a) for a in skip[0].attribute}
    assert attrs["ld"] == HIDDEN and numpy_helper.to_array(attrs["gamma"]).shape == (HIDDEN,)
    assert report["plugins"]["gelu"]["status"] == "unchecked"  # ONNX Runtime cannot run TensorRT plugins
    assert any(o.domain == "trt.plugins" for o in fused.opset_import)


# --- near misses: built by hand, left alone, reported ------------------------------------------------------------

def _model(nodes, inits, out_shape=(2, 4, 8), extra_outputs=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8])
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))]
    outs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in extra_outputs]
    g = helper.make_graph(nodes, "g", [x], outs, [numpy_helper.from_array(np.asarray(v, np.float32), k)
                                                   for k, v in inits.items()])
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)],
                                                               ir_version=8))


def _gelu(half: float, extra_outputs=()):
    return _model([helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                   helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
                   helper.make_node("Mul", ["m", "half"], ["y"])],
                  {"sqrt2": np.sqrt(2.0), "one": 1.0, "half": half}, extra_outputs=extra_outputs)


def _layernorm(axes):
    return _model([helper.make_node("ReduceMean", ["x"], ["m"], axes=axes),
                   helper.make_node("Sub", ["x", "m"], ["d"]), helper.make_node("Pow", ["d", "two"], ["p"]),
                   helper.make_node("ReduceMean", ["p"], ["v"], axes=axes), helper.make_node("Add", ["v", "eps"], ["ve"]),
                   helper.make_node("Sqrt", ["ve"], ["s"]), helper.make_node("Div", ["d", "s"], ["n"]),
                   helper.make_node("Mul", ["n", "gamma"], ["g"]), helper.make_node("Add", ["g", "beta"], ["y"])],
                  {"two": 2.0, "eps": 1e-5, "gamma": np.linspace(0.5, 1.5, 8), "beta": np.linspace(-1, 1, 8)})


def _x():
    return [{"x": np.random.default_rng(1).standard_normal((2, 4, 8)).astype(np.float32)}]


def test_hand_built_patterns_are_fused():
    for model, plugin, op in ((_gelu(0.5), "gelu", "Gelu"), (_layernorm([-1]), "layernorm", "LayerNormalization")):
        fused, report = fuse(model, "onnx", _x())
        assert report["plugins"][plugin]["fused"] == 1 and ops(fused)[op] == 1, report
        np.testing.assert_allclose(run(fused, _x())[0][0], run(model, _x())[0][0], atol=1e-5)


@pytest.mark.parametrize("model, plugin, reason", [
    (lambda: _gelu(0.6), "gelu", "not multiplied by x and 0.5"),
    (lambda: _gelu(0.5, extra_outputs=("d",)), "gelu", "read elsewhere"),
    (lambda: _layernorm([1]), "layernorm", "last axis"),
], ids=["gelu-wrong-constant", "gelu-shared-intermediate", "layernorm-wrong-axis"])
def test_near_misses_are_left_alone_and_reported(model, plugin, reason):
    model = model()
    fused, report = fuse(model, "onnx", _x())
    entry = report["plugins"][plugin]
    assert entry["fused"] == 0
    assert any(reason in p["reason"] for p in entry["partial"]), entry
    assert ops(fused) == ops(model)


def test_residual_sum_read_elsewhere_is_not_fused():
    nodes = [helper.make_node("Add", ["x", "x2"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1)]
    model = _model([helper.make_node("Mul", ["x", "two"], ["x2"])] + nodes,
                   {"two": 2.0, "gamma": np.ones(8), "beta": np.zeros(8)}, extra_outputs=("s",))
    fused, report = fuse(model, "ort_contrib", _x())
    assert report["plugins"]["skip_layernorm"]["fused"] == 0
    assert "also read elsewhere" in report["plugins"]["skip_layernorm"]["partial"][0]["reason"]
    assert "SkipLayerNormalization" not in ops(fused)


def test_a_rewrite_that_changes_numerics_is_undone(monkeypatch):
    """The check after every rewrite: a plugin that emits the tanh approximation for an erf GELU is undone."""
    import servicemaker.plugins as plugins

    real = registry()["gelu"]

    def wrong(graph, match, flavor):
        match.values["approximate"] = "tanh"
        return real.rewrite(graph, match, flavor)

    monkeypatch.setattr(plugins, "registry", lambda: {"gelu": Fusion("gelu", "", real.find, wrong, 20)})
    x = [{"x": (np.random.default_rng(2).standard_normal((2, 4, 8)) * 3).astype(np.float32)}]
    fused, report = fuse(_gelu(0.5), "onnx", x)
    assert report["plugins"]["gelu"]["status"] == "undone" and "moved by" in report["plugins"]["gelu"]["reason"]
    assert "Erf" in ops(fused)
