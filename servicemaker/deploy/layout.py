"""Serving layouts: how a pipeline's components become Triton models.

- ``ensemble`` (the default, Riva's layout): one model per component (tokenizer, network, decoders) and an ensemble,
  named by the pipeline, wiring them; the network can be any target's model (a TensorRT plan on a GPU).
- ``fused``: one Python-backend model, named by the pipeline and with the ensemble's inputs and outputs, running the
  same handlers in-process in the ensemble's order (:class:`servicemaker.runtime.common.Chain`): no hop between
  models, and every request of a Triton batch goes through each step at once. Only where every step can run in the
  Python backend: the ``onnxruntime-python`` target, pipelines of one ensemble whose networks are its steps
  (not called by another model) and without a sequence (streaming) or decoupled step.

The client contract — the model's name, its input and output tensors — is the same in both.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from servicemaker.deploy.config import ModelConfigSpec, TensorSpec
from servicemaker.deploy.state import ENSEMBLE, ModelPlan, RmirPlan, _Deploy
from servicemaker.errors import UsageError
from servicemaker.pipeline import Step

LAYOUTS = ("ensemble", "fused")
#: targets whose network runs in the Python backend, so the whole pipeline can be one model
FUSABLE_TARGETS = ("onnxruntime-python",)
#: the fused model's parameter holding its steps, and the handler name the runtime knows it by
CHAIN_PARAM = "chain"
CHAIN_HANDLER = "chain"


def check(d: _Deploy, sequence: Callable[[RmirPlan], list[str]]) -> None:
    """Refuse ``--serving=fused`` where it cannot run, before any compile work. ``sequence(rmir)`` names the
    components of that pipeline that need Triton's sequence batcher or its decoupled transaction policy."""
    if d.opts.serving not in LAYOUTS:
        raise UsageError(f"--serving={d.opts.serving}: expected one of {', '.join(LAYOUTS)}")
    if d.opts.serving != "fused":
        return
    if d.target not in FUSABLE_TARGETS:
        raise UsageError(f"--serving=fused runs the network in Triton's Python backend, which target {d.target} "
                         "does not", hint="deploy with --target onnxruntime-python, or keep --serving=ensemble "
                                          "(a GPU network needs its own model)")
    for rmir in d.rmirs:
        streaming = sequence(rmir)
        if streaming:
            raise UsageError(f"--serving=fused cannot serve {rmir.spec.name} ({rmir.spec.pipeline}): its "
                             f"{', '.join(streaming)} streams (Triton's sequence batcher or decoupled responses)",
                             hint="deploy this RMIR with --serving=ensemble")
        stepped = {step.component for step in rmir.spec.ensemble.steps}
        called = [c for c in rmir.networks if c not in stepped]
        if called or rmir.spec.ensembles:
            raise UsageError(f"--serving=fused cannot serve {rmir.spec.name} ({rmir.spec.pipeline}): "
                             + (f"its {', '.join(called)} run as models another model calls" if called
                                else "it has several ensembles"), hint="deploy this RMIR with --serving=ensemble")


def fused(d: _Deploy) -> bool:
    return d.opts.serving == "fused"


def wired_steps(rmir: RmirPlan, key: str = ENSEMBLE) -> list[tuple[Step, dict[str, str]]]:
    """The steps of ensemble ``key`` in order, each with its input map (a network's: only the inputs its graph
    has)."""
    def graph_inputs(comp: str) -> set[str]:
        sig = rmir.networks[comp].signature
        assert sig is not None
        return {t.name for t in sig.inputs}

    return [(step, {k: v for k, v in step.inputs.items()
                    if step.component not in rmir.networks or k in graph_inputs(step.component)})
            for step in rmir.spec.entry_ensembles()[key].steps]


def ensemble_tensors(rmir: RmirPlan, key: str = ENSEMBLE) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The client contract: the input and output tensors of ensemble ``key``."""
    ens = rmir.spec.entry_ensembles()[key]
    return ([TensorSpec(t.name, f"TYPE_{t.dtype}", t.dims, optional=t.optional) for t in ens.inputs],
            [TensorSpec(t.name, f"TYPE_{t.dtype}", t.dims) for t in ens.outputs])


def fused_spec(rmir: RmirPlan, component_spec: Callable[[str], ModelConfigSpec]) -> ModelConfigSpec:
    """The fused model's config: the ensemble's tensors; the steps (handler, parameters, tensor maps, the folder
    of the step's files) as JSON in the ``chain`` parameter. ``component_spec(comp)`` is the config the component
    would have as a model of its own (its parameters are the step's)."""
    steps = []
    for step, inputs in wired_steps(rmir):
        params = dict(component_spec(step.component).parameters)
        handler = params.pop("handler")
        steps.append({"component": step.component, "handler": handler, "folder": step.component, "params": params,
                      "inputs": inputs, "outputs": dict(step.outputs)})
    components = rmir.spec.components.values()
    inputs, outputs = ensemble_tensors(rmir)
    return ModelConfigSpec(
        name=rmir.spec.name, template="python",
        max_batch_size=min(int(cs.params["max_batch_size"]) for cs in components),
        instance_count=max(int(cs.params["instance_group_count"]) for cs in components),
        # no batching delay: a batch is whatever queued while the previous one ran (a delay only adds latency when
        # requests come one at a time: measured +0.3 ms p50 at 100 µs, docs/deploy.md "Serving layouts")
        queue_delay_us=0,
        comment=f"{rmir.spec.pipeline} pipeline from {rmir.arg.path.name}, fused into one model "
                f"({' -> '.join(s['component'] for s in steps)})",
        inputs=inputs, outputs=outputs, parameters={"handler": CHAIN_HANDLER, CHAIN_PARAM: json.dumps(steps, sort_keys=True)})


def write_members(d: _Deploy, plan: ModelPlan, folder: Path) -> None:
    """Each step's files in its own subfolder of the fused model's version folder: the component's artifacts, and
    for the network what the network step staged (model.onnx and its data)."""
    for comp, member in plan.rmir.models.items():
        if member is plan:
            continue
        sub = folder / comp
        sub.mkdir(exist_ok=True)
        for dest, src in member.files.items():
            shutil.copyfile(src, sub / dest)
        if plan.rmir.spec.components[comp].kind == "network":
            for path in sorted(d.staged(member).iterdir()):
                if path.is_file():
                    shutil.move(str(path), sub / path.name)


def members_left(d: _Deploy, rmir: RmirPlan) -> list[str]:
    """Models of the ensemble layout this RMIR wrote before that a fused deploy leaves in the repository."""
    return sorted(m.name for m in rmir.members().values() if (d.opts.repo / m.name).exists())

