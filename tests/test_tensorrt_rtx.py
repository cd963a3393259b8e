"""The graphs and optimization profiles svc-deploy hands TensorRT parse and build — proven with TensorRT-RTX,
whose ONNX parser and builder run on the CPU. Standard TensorRT cannot be installed here; the real Triton plans
it would build are untested (docs/deploy.md says so)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import NLP


def test_tensorrt_target_builds_every_nlp_network_with_tensorrt_rtx(tiny_rmirs, tmp_path):
    repo = tmp_path / "repo"
    env = dict(os.environ, POLYGRAPHY_USE_TENSORRT_RTX="1", XDG_CACHE_HOME=str(tmp_path / "cache"))
    exe = Path(sys.executable).parent / "svc-deploy"
    run = subprocess.run([str(exe), *map(str, tiny_rmirs.values()), str(repo), "--target", "tensorrt"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "TensorRT-RTX" in run.stderr
    status = json.loads((repo / "deploy_status.json").read_text())
    step = next(s for s in status["steps"] if s["name"] == "choose_target")
    assert step["engine_builder"] == "tensorrt_rtx" and step["instance_kind"] == "KIND_GPU"
    plans = sorted(repo.glob("riva-trt-*/1/model.plan"))
    assert len(plans) == len(NLP)
    assert all(p.stat().st_size > 100_000 for p in plans)
    nets = next(s for s in status["steps"] if s["name"] == "prepare_networks")
    assert {v["file"] for k, v in nets.items() if isinstance(v, dict)} == {"model.plan"}


def test_without_tensorrt_the_target_stops_clearly(tiny_rmirs, tmp_path):
    """No TensorRT and no GPU here: the tensorrt target says so, exits 8 and writes nothing."""
    exe = Path(sys.executable).parent / "svc-deploy"
    env = {k: v for k, v in os.environ.items() if k != "POLYGRAPHY_USE_TENSORRT_RTX"}
    run = subprocess.run([str(exe), str(tiny_rmirs["qa"]), str(tmp_path / "repo"), "--target", "tensorrt"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 8
    assert "the tensorrt target cannot build engines here" in run.stderr and "Traceback" not in run.stderr
    assert list(tmp_path.iterdir()) == []
