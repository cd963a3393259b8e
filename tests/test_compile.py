"""INT8 Q/DQ structure and calibration determinism, 2:4 sparsity, the accuracy gate and its fallback, and the
compiler options through svc-deploy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from servicemaker.deploy import DeployOptions, deploy, graph as graphs, quantize, sparsity
from servicemaker.deploy.optimize import AccuracyError, CompileOptions, compile_network, run
from servicemaker.errors import UsageError
from servicemaker.keys import ArchiveArg

from conftest import gate_refuses_then_allows, listing
from test_plugins import EXPORTS, export_bert, feeds


@pytest.fixture(scope="module")
def bert():
    model = graphs.fold_constants(export_bert(*EXPORTS["torchscript-17-sdpa-tanh"]))
    return quantize._ensure_names(onnx.shape_inference.infer_shapes(model))


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


@pytest.mark.parametrize("symmetric", [False, True], ids=["cpu-uint8", "tensorrt-int8"])
def test_qdq_structure(bert, tmp_path, symmetric):
    settings = quantize.QuantSettings(method="minmax", symmetric_activations=symmetric)
    q = quantize.quantize(bert, feeds(4), settings, tmp_path)
    onnx.checker.check_model(q)
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    prod = _producers(q)
    layers = [n for n in q.graph.node if n.name in set(quantize.quantizable(bert))]
    assert len(layers) == 6 * 2  # Q, K, V, attention output, FFN in, FFN out per layer
    for node in layers:
        act, weight = prod[node.input[0]], prod[node.input[1]]
        assert act.op_type == "DequantizeLinear" and prod[act.input[0]].op_type == "QuantizeLinear"
        zero = inits[act.input[2]]
        assert zero.dtype == (np.int8 if symmetric else np.uint8)
        if symmetric:
            assert zero == 0  # TensorRT's Q/DQ layers take zero point 0 only
        assert weight.op_type == "DequantizeLinear" and inits[weight.input[0]].dtype == np.int8
        w_scale, w_zero = inits[weight.input[1]], inits[weight.input[2]]
        axis = next(a.i for a in weight.attribute if a.name == "axis")
        assert axis == 1 and w_scale.shape == (inits[weight.input[0]].shape[1],) and not w_zero.any()
    # only the layers read quantized activations: residual adds, LayerNorms, Softmax, GELU stay FP32
    dq_outputs = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    readers = {n.op_type for n in q.graph.node if set(n.input) & dq_outputs}
    assert readers == {"MatMul"}
    # the attention score and context MatMuls (both operands activations) are not quantized
    assert sum(1 for n in q.graph.node if n.op_type == "MatMul" and prod.get(n.input[0]) is not None
               and prod[n.input[0]].op_type != "DequantizeLinear") == 2 * 2
    cos = [np.dot(a[0].ravel(), b[0].ravel()) / np.linalg.norm(a[0]) / np.linalg.norm(b[0])
           for a, b in zip(run(bert, feeds()), run(q, feeds()))]
    assert min(cos) > 0.99


def test_calibration_is_deterministic_and_methods_differ(bert, tmp_path):
    models = {}
    for method in quantize.METHODS:
        for attempt in (1, 2):
            q = quantize.quantize(bert, feeds(4), quantize.QuantSettings(method=method), tmp_path / f"{method}{attempt}")
            models[method, attempt] = q.SerializeToString()
        assert models[method, 1] == models[method, 2], method
    assert len({models[m, 1] for m in quantize.METHODS}) == 3
    ranges = {m: json.loads(next((tmp_path / f"{m}1").glob("ranges-*.json")).read_text()) for m in quantize.METHODS}
    some = sorted(ranges["minmax"])[0]
    lo, hi = ranges["minmax"][some]
    assert lo <= ranges["percentile"][some][0] + 1e-6 or hi >= ranges["percentile"][some][1] - 1e-6


def test_sparsity_prunes_2_of_every_4_along_the_input_dimension(bert):
    before = {t.name: numpy_helper.to_array(t) for t in bert.graph.initializer}
    model = onnx.ModelProto()
    model.CopyFrom(bert)
    pruned, report = sparsity.prune_2_4(model)
    assert report["pruned"] == 6 * 2 and len(report["layers"]) == report["pruned"]
    after = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    for layer in report["layers"]:
        w, original = after[layer["weight"]], before[layer["weight"]]
        assert sparsity.is_2_4(w, axis=0) and not sparsity.is_2_4(original, axis=0)
        groups = np.abs(original).reshape(-1, 4, w.shape[1])  # groups of 4 consecutive input rows
        kept = (w.reshape(-1, 4, w.shape[1]) != 0)
        # the kept two are the two largest magnitudes of their group
        assert np.all(np.sort(groups, axis=1)[:, 2:, :].sum(1) - (groups * kept).sum(1) < 1e-6)
    assert all(0.5 < layer["energy_kept"] < 1.0 for layer in report["layers"])


def test_unsuitable_shapes_are_not_pruned():
    w = np.random.default_rng(0).standard_normal((32, 5)).astype(np.float32)  # a 5-class head
    g = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="head")], "g",
                               [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 32])],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 5])],
                               [numpy_helper.from_array(w, "w")])
    _, report = sparsity.prune_2_4(onnx.helper.make_model(g))
    assert report["pruned"] == 0


def test_gate_failure_raises_and_fallback_keeps_layers(bert, tmp_path):
    pruned = CompileOptions(target="onnxruntime", sparsity="2:4", accuracy_tolerance=0.0)
    with pytest.raises(AccuracyError) as err:  # pruning cannot fall back: the gate fails the compile
        compile_network(bert, pruned, feeds(4), feeds(), tmp_path / "a")
    assert "nn.accuracy_tolerance" in err.value.message and "--allow-accuracy-drop" in err.value.hint
    allowed = CompileOptions(target="onnxruntime", precision="int8", calibration_method="minmax",
                             accuracy_tolerance=1e-9, allow_accuracy_drop=True)
    _, report = compile_network(bert, allowed, feeds(4), feeds(), tmp_path / "b")
    int8 = report["int8"]
    assert int8["first_attempt"]["status"] == "failed"
    assert int8["kept_fp32"] and set(int8["kept_fp32"]) <= set(quantize.quantizable(bert))
    assert int8["quantized"] == int8["layers"] - len(int8["kept_fp32"])
    # worst-first in growing sets: with a tolerance nothing quantized meets, every layer ends up in FP32
    assert report["accuracy"]["status"] == "passed" and int8["quantized"] == 0


# --- through svc-deploy ---------------------------------------------------------------------------------------------

def _deploy(rmir: Path, repo: Path, **kw):
    return deploy(DeployOptions(rmirs=[ArchiveArg(rmir, None)], repo=repo, target="onnxruntime", **kw))


def test_deploy_int8_records_the_report(tiny_rmirs, tmp_path):
    repo = tmp_path / "repo"
    _deploy(tiny_rmirs["text_classification"], repo, overrides={"nn.precision": "int8"})
    status = json.loads((repo / "deploy_status.json").read_text())
    nn = next(v for k, v in status["models"].items() if "-nn-" in k)
    opt = nn["optimization"]
    assert opt["precision"] == "int8" and opt["int8"]["quantized"] > 0
    assert opt["int8"]["calibration_data"].startswith("servicemaker's default English sentences")
    assert opt["accuracy"]["status"] == "passed" and opt["accuracy"]["cosine"] > 0.99
    model = onnx.load(str(next(repo.glob("*-nn-*/1/model.onnx"))))
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    step = next(s for s in status["steps"] if s["name"] == "prepare_networks")
    assert next(iter(v for v in step.values() if isinstance(v, dict)))["int8_layers"] > 0


def test_deploy_sparsity_fails_the_gate_and_leaves_the_repo_alone(tiny_rmirs, tmp_path):
    exe = Path(sys.executable).parent / "svc-deploy"
    repo = tmp_path / "repo"
    args = [str(exe), str(tiny_rmirs["token_classification"]), str(repo), "--target", "onnxruntime",
            "--nn.sparsity=2:4", "--nn.accuracy_tolerance=0"]
    gate_refuses_then_allows(args, tmp_path, "loses more accuracy than nn.accuracy_tolerance=0.0 allows", 300)
    status = json.loads((repo / "deploy_status.json").read_text())
    opt = next(v for k, v in status["models"].items() if "-nn-" in k)["optimization"]
    assert opt["accuracy"]["status"] == "failed" and opt["sparsity"]["pruned"] > 0


@pytest.mark.parametrize("flag, message", [
    ("--nn.precision=int4", "--nn.precision"),
    ("--nn.max_batch_size=4", "svc-deploy cannot override --nn.max_batch_size"),
    ("--tokenizer.lower_case=false", "svc-deploy cannot override --tokenizer.lower_case"),
])
def test_bad_overrides_fail_before_anything_is_written(tiny_rmirs, tmp_path, flag, message):
    exe = Path(sys.executable).parent / "svc-deploy"
    run_ = subprocess.run([str(exe), str(tiny_rmirs["qa"]), str(tmp_path / "repo"), flag],
                          capture_output=True, text=True, timeout=120)
    assert run_.returncode == 2 and message in run_.stderr and "Traceback" not in run_.stderr
    assert listing(tmp_path) == []


def test_overrides_are_checked_by_the_api_too(tiny_rmirs, tmp_path):
    with pytest.raises(UsageError):
        _deploy(tiny_rmirs["qa"], tmp_path / "r", overrides={"nn.calibration_method": "median"})
