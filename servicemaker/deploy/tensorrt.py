"""The one seam to TensorRT. Nothing here imports tensorrt, pycuda or polygraphy's TensorRT backend until an engine
is actually built, so svc-build and CPU deploys never need them.

Engines are built through polygraphy (``network_from_onnx_path`` → ``CreateConfig`` → ``engine_from_network``) with
one optimization profile spanning batch 1..max_batch_size and sequence 1..max_seq_length. Setting
``POLYGRAPHY_USE_TENSORRT_RTX=1`` makes polygraphy (and so this seam) use TensorRT-RTX instead; the tests use that
to prove on a CPU-only machine that the graphs and profiles we hand TensorRT parse and build. RTX engines are not
Triton ``tensorrt_plan`` models, so svc-deploy itself always requires standard TensorRT for the tensorrt target.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servicemaker.errors import ServiceMakerError


class TensorRTUnavailableError(ServiceMakerError, RuntimeError):
    """The tensorrt target was asked for where TensorRT or a GPU is missing."""

    exit_code = 8


@dataclass(frozen=True)
class EngineSettings:
    #: input name → (min, opt, max) shapes
    profile: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
    fp16: bool = True
    #: the graph carries explicit Q/DQ (INT8 is decided by the graph, not by a builder flag)
    int8: bool = False
    sparse_weights: bool = False
    workspace_mib: int = 4096
    timing_cache: Path | None = None


def use_rtx() -> bool:
    return os.environ.get("POLYGRAPHY_USE_TENSORRT_RTX", "0") != "0"


def gpu_present() -> bool:
    """An NVIDIA GPU with a working driver is visible."""
    if not Path("/dev/nvidiactl").exists() and shutil.which("nvidia-smi") is None:
        return False
    try:
        run = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return run.returncode == 0 and "GPU" in run.stdout


def missing() -> str | None:
    """Why an engine cannot be built here, or None when TensorRT, polygraphy and a GPU are all present."""
    module = "tensorrt_rtx" if use_rtx() else "tensorrt"
    if importlib.util.find_spec(module) is None:
        return f"the Python package '{module}' is not installed"
    if importlib.util.find_spec("polygraphy") is None:
        return "the Python package 'polygraphy' is not installed"
    if not use_rtx() and not gpu_present():
        return "no NVIDIA GPU with a working driver is visible (nvidia-smi -L)"
    return None


def require() -> None:
    reason = missing()
    if reason:
        raise TensorRTUnavailableError(
            f"the tensorrt target cannot build engines here: {reason}",
            hint="deploy on a GPU machine with TensorRT >= 10 (pip install tensorrt 'servicemaker[tensorrt]'), "
                 "or use --target onnxruntime")


def profile_for(inputs: list[str], max_batch_size: int, max_seq_length: int, opt_batch: int | None = None):
    """One profile: batch 1..max_batch_size, sequence 1..max_seq_length, tuned for ``opt_batch`` rows (default the
    middle of the batch range) and the middle of the sequence range."""
    batch = opt_batch if opt_batch is not None else (max_batch_size + 1) // 2
    opt = (max(1, min(batch, max_batch_size)), max(1, max_seq_length // 2))
    return {name: ((1, 1), opt, (max_batch_size, max_seq_length)) for name in inputs}


def gpu_info() -> dict[str, str]:
    """Name, compute capability and driver of the first GPU (nvidia-smi), or {} without one."""
    try:
        run = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    first = run.stdout.strip().splitlines()[0] if run.returncode == 0 and run.stdout.strip() else ""
    parts = [p.strip() for p in first.split(",")]
    return dict(zip(("gpu", "compute_capability", "driver"), parts)) if len(parts) == 3 else {}


_FINGERPRINTS: dict[str, dict[str, str]] = {}


def fingerprint() -> dict[str, str]:
    """What an engine depends on besides its graph and settings: the builder and its version, the GPU model and its
    compute capability (engines are specific to all of them). Computed once per process and builder, on first use:
    only a deploy to the tensorrt target asks for it."""
    require()
    module = "tensorrt_rtx" if use_rtx() else "tensorrt"
    if module not in _FINGERPRINTS:
        try:
            version = str(importlib.import_module(module).__version__)
        except ImportError:  # only where the seam is replaced (tests): building an engine imports it
            version = "unavailable"
        gpu = gpu_info()
        _FINGERPRINTS[module] = {"builder": module, "tensorrt_version": version,
                                 "gpu": gpu.get("gpu", "none"),
                                 "compute_capability": gpu.get("compute_capability", "none")}
    return dict(_FINGERPRINTS[module])


def build_flags(settings: EngineSettings) -> dict[str, Any]:
    """polygraphy ``CreateConfig`` precision, sparsity and timing-cache arguments for ``settings``."""
    kwargs: dict[str, Any] = {}
    if not use_rtx():  # TensorRT-RTX builds strongly typed networks and has no precision or sparsity flags
        kwargs.update(fp16=settings.fp16, sparse_weights=settings.sparse_weights)
        if settings.timing_cache is not None and settings.timing_cache.exists():
            kwargs["load_timing_cache"] = str(settings.timing_cache)
    return kwargs


def build_engine(onnx_path: Path, plan_path: Path, settings: EngineSettings) -> dict[str, Any]:
    """Build a serialized engine from ``onnx_path`` into ``plan_path`` and record its metadata beside it
    (``model.plan.json``: TensorRT version, GPU, compute capability, flags, profile); returns the metadata."""
    require()
    from polygraphy.backend.trt import CreateConfig, Profile, engine_bytes_from_network, network_from_onnx_path

    trt = importlib.import_module("tensorrt_rtx" if use_rtx() else "tensorrt")
    profile = Profile()
    for name, (lo, opt, hi) in settings.profile.items():
        profile.add(name, min=lo, opt=opt, max=hi)
    config = CreateConfig(profiles=[profile], **build_flags(settings),
                          memory_pool_limits={trt.MemoryPoolType.WORKSPACE: settings.workspace_mib << 20})
    network = network_from_onnx_path(str(onnx_path))
    cache = str(settings.timing_cache) if settings.timing_cache is not None and not use_rtx() else None
    started = time.perf_counter()
    data = engine_bytes_from_network(network, config=config, save_timing_cache=cache)
    if data is None:
        raise ServiceMakerError(f"TensorRT could not build an engine from {onnx_path.name}",
                                hint="run again with --debug; TensorRT's log above names the failing layer")
    plan_path.write_bytes(bytes(data))
    meta = {"builder": "tensorrt_rtx" if use_rtx() else "tensorrt", "tensorrt_version": trt.__version__,
            **gpu_info(), "fp16": settings.fp16 and not use_rtx(), "int8_qdq": settings.int8,
            "sparse_weights": settings.sparse_weights and not use_rtx(), "workspace_mib": settings.workspace_mib,
            "profile": {k: {"min": list(v[0]), "opt": list(v[1]), "max": list(v[2])}
                        for k, v in settings.profile.items()},
            "timing_cache": cache is not None, "build_seconds": round(time.perf_counter() - started, 3),
            "bytes": plan_path.stat().st_size}
    plan_path.with_name(plan_path.name + ".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def run_engine(plan_path: Path, feeds: list[dict[str, Any]], outputs: list[str]) -> list[list[Any]]:
    """Outputs of the engine for each feed (polygraphy's TensorRT runner; needs a GPU)."""
    require()
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    results = []
    with TrtRunner(EngineFromBytes(BytesFromPath(str(plan_path)))) as runner:
        names = set(runner.get_input_metadata().keys())
        for feed in feeds:
            got = runner.infer({k: v for k, v in feed.items() if k in names})
            results.append([got[name] for name in outputs])
    return results
