"""``deploy_status.json``: what the last deploy did, written into the repository as part of the deploy's commit."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from typing import Any

from servicemaker import __version__
from servicemaker.deploy.state import _Deploy

STATUS_FILE = "deploy_status.json"
STATUS_FORMAT = "servicemaker.deploy_status/1"


def _versions() -> dict[str, str]:
    out = {"servicemaker": __version__, "python": platform.python_version()}
    for dist in ("onnx", "onnxruntime", "onnx-graphsurgeon", "tokenizers", "numpy", "tensorrt", "polygraphy"):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


def write_status(d: _Deploy, seconds: float) -> None:
    """Merge this deploy's models into the repository's status and write it (atomically, journaled)."""
    assert d.staging is not None
    path = d.opts.repo / STATUS_FILE
    previous: dict[str, Any] = {}
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8")).get("models", {})
        except (ValueError, AttributeError):
            previous = {}
    models = dict(previous) if isinstance(previous, dict) else {}
    for plan in d.models.values():
        if plan.action == "keep":
            continue
        models[plan.name] = {"pipeline": plan.rmir.spec.pipeline, "component": plan.component,
                             "rmir": plan.rmir.arg.path.name, "rmir_sha256": plan.rmir.sha256, "target": d.target}
        if plan.report:
            models[plan.name]["optimization"] = plan.report
        if plan.cache:
            models[plan.name]["cache"] = plan.cache
    status = {
        "format": STATUS_FORMAT,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": d.target,
        "serving": d.opts.serving,
        "force": d.opts.force,
        "seconds": round(seconds, 3),
        "versions": _versions(),
        "inputs": [{"file": r.arg.path.name, "sha256": r.sha256, "size": r.size, "pipeline": r.spec.pipeline,
                    "name": r.spec.name, "spec_version": r.spec.spec_version} for r in d.rmirs],
        "steps": [{"name": s.name, "status": s.status, "seconds": round(s.seconds, 3), **s.detail}
                  for s in d.results],
        "models": dict(sorted(models.items())),
    }
    d.staging.write_file(STATUS_FILE, json.dumps(status, indent=2) + "\n")
