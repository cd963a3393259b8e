"""svc-deploy: RMIR(s) → a Triton model repository.

Deploy is an explicit, ordered list of named steps (:data:`STEPS`), each returning a typed :class:`StepResult`.
Everything is written into a staging folder beside the repository first; only the commit moves finished model
folders into the repository and writes ``deploy_status.json`` (:mod:`servicemaker.deploy.staging`: a new repository
appears with one ``rename``; an existing one is changed under a journal). So a deploy that fails — wrong key,
missing artifact, a graph that does not fit, a newer spec — leaves the repository exactly as it was, and one that is
killed is rolled back and cleaned up by the next deploy.

Without ``force``, model folders that already exist are kept and reported; with ``force`` only the models of the
given RMIRs are replaced. Other models in the repository are never touched.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from importlib import resources
from typing import Any, Callable

from servicemaker.build import Reporter, SilentReporter, sha256_file
from servicemaker import objstore
from servicemaker.deploy import cache, layout, tensorrt
from servicemaker.deploy.config import EnsembleStep, ModelConfigSpec, TensorSpec, check_ensemble, render
from servicemaker.deploy.networks import (_family, _job, _network_params, _safe_dest, check_graphs,
                                         check_overrides_apply, jobs, lookup_cache, prepare_networks)
from servicemaker.deploy.state import (ENSEMBLE, DeployOptions, DeployResult, ModelPlan, NetworkPlan, RmirPlan,
                                       StepResult, _Deploy, is_ensemble)
from servicemaker.deploy.staging import Staging, sweep
from servicemaker.deploy.status import STATUS_FILE, write_status
from servicemaker.eff import onnx_tar
from servicemaker.eff.codecs import KeyRing, digest_of
from servicemaker.eff.reader import EffReader
from servicemaker.errors import NotFoundError, ServiceMakerError, UsageError, ValidationError
from servicemaker.keys import fallback_key
from servicemaker.pipeline import Component
from servicemaker.pipelines import get_family, get_pipeline
from servicemaker.runtime import common
from servicemaker.spec import ComponentSpec, read_spec

TARGETS = ("auto", "tensorrt", "onnxruntime", "onnxruntime-python")
#: the ``{runtime}`` part of network model names, as Riva names them
RUNTIME_TAG = {"tensorrt": "trt", "onnxruntime": "onnx", "onnxruntime-python": "onnx"}
REQUIREMENTS_FILE = "requirements.txt"
HANDLER_FILE = "svc_handlers.py"
COMMON_FILE = "svc_common.py"
SERVING_PARAMS = {"max_batch_size", "instance_group_count", "max_queue_delay_microseconds"}


# --- the steps -------------------------------------------------------------------------------------------------------

def choose_target(d: _Deploy) -> dict[str, Any]:
    """Resolve ``auto``; for tensorrt make sure an engine can be built before anything is written; open the compile
    cache (a bad ``--cache`` URL fails here, before any compile work)."""
    if d.target not in TARGETS:
        raise UsageError(f"--target={d.target}: expected one of {', '.join(TARGETS)}")
    reason = tensorrt.missing()
    if d.target == "auto":
        d.target = "tensorrt" if reason is None else "onnxruntime"
    if d.target == "tensorrt":
        tensorrt.require()
        d.instance_kind = "KIND_GPU"
        if tensorrt.use_rtx():
            d.rep.warn("POLYGRAPHY_USE_TENSORRT_RTX is set: engines are built with TensorRT-RTX, which "
                       "Triton's tensorrt_plan backend cannot load; use this repository for checks only")
    elif d.target == "onnxruntime" and reason is None:
        d.instance_kind = "KIND_GPU"
    builder = ("tensorrt_rtx" if tensorrt.use_rtx() else "tensorrt") if d.target == "tensorrt" else None
    if d.opts.use_cache:
        d.cache = cache.CompileCache(d.opts.cache, d.rep.warn)
    elif d.opts.cache:
        raise UsageError(f"--cache {objstore.redact(d.opts.cache)} and --no-cache contradict each other",
                         hint="give one of them")
    return {"target": d.target, "instance_kind": d.instance_kind, "tensorrt": reason or "available",
            "engine_builder": builder, "cache": d.cache.describe() if d.cache is not None else "off"}


def read_rmirs(d: _Deploy) -> dict[str, Any]:
    """Open every RMIR (key checked here), read its pipeline spec, check every artifact it names is present."""
    seen: dict[str, str] = {}
    for index, arg in enumerate(d.opts.rmirs):
        if arg.url is not None:
            local = d.stage / "inputs" / f"rmir-{index}.rmir"
            local.parent.mkdir(exist_ok=True)
            d.rep.step(f"Downloading {arg.shown}")
            digest, size = objstore.download(arg.url, local, d.opts.limits.max_total_bytes, "RMIR")
        elif not arg.path.is_file():
            raise NotFoundError(f"RMIR {arg.shown} does not exist", hint="build one with svc-build")
        else:
            local = arg.path
        d.rep.step(f"Reading {arg.shown}")
        with ThreadPoolExecutor(1) as pool:
            # the file's sha256 while the reader inflates and verifies it (both release the GIL)
            hashed = pool.submit(sha256_file, local) if arg.url is None else None
            reader = d.stack.enter_context(EffReader(local, ring=KeyRing(key=arg.key or fallback_key(),
                                                                         salts=d.opts.salts), limits=d.opts.limits))
            if hashed is not None:
                digest, size = hashed.result()
        if digest in seen:
            raise UsageError(f"{arg.shown} and {seen[digest]} are the same RMIR")
        seen[digest] = arg.shown
        spec = read_spec(reader.metadata, arg.shown)
        pipeline = get_pipeline(spec.pipeline)
        get_family(pipeline)  # refuses a pipeline whose family svc-deploy cannot deploy yet
        missing = [f"{comp}.{role}: {ref.name}" for comp, cs in spec.components.items()
                   for role, ref in cs.artifacts.items() if ref.name not in reader.artifacts]
        unknown = sorted(set(spec.components) ^ {c.name for c in pipeline.components})
        if unknown:
            raise ValidationError(f"{arg.shown}: its spec's components do not match pipeline {spec.pipeline}",
                                  [f"component {c}" for c in unknown], hint="rebuild the RMIR with this svc-build")
        if missing:
            raise NotFoundError(f"{arg.shown} lacks artifacts its pipeline spec names: {'; '.join(missing)}",
                                hint="the RMIR is damaged or was edited; rebuild it with svc-build")
        networks = {c: NetworkPlan(c) for c, cs in spec.components.items() if cs.kind == "network"}
        d.rmirs.append(RmirPlan(arg=arg, reader=reader, spec=spec, pipeline=pipeline, sha256=digest, size=size,
                                networks=networks))
    check_overrides_apply(d)  # a bad --<network>.* override fails here, before anything is extracted
    for rmir in d.rmirs:
        for comp in rmir.networks:
            _network_params(d, rmir, comp)
    return {"rmirs": [{"file": r.arg.path.name, "sha256": r.sha256, "pipeline": r.spec.pipeline,
                       "name": r.spec.name} for r in d.rmirs]}


def _model_name(comp: ComponentSpec, target: str) -> str:
    return comp.model_name.replace("{runtime}", RUNTIME_TAG[target])


def _fingerprint(rmir: RmirPlan, comp: str, target: str) -> str:
    if is_ensemble(comp):
        payload: Any = [rmir.sha256, comp]
    else:
        cs = rmir.spec.components[comp]
        payload = [cs.kind, rmir.pipeline.component(comp).handler, cs.params,
                   {role: ref.sha256 for role, ref in cs.artifacts.items()}, target if cs.kind == "network" else ""]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _streaming_steps(rmir: RmirPlan) -> list[str]:
    """Components behind Triton's sequence batcher or decoupled (they cannot run as steps of one fused model)."""
    return [c for c, cs in rmir.spec.components.items()
            if cs.kind != "network" and (_handler(rmir, c).SEQUENCE or _handler(rmir, c).DECOUPLED)]


def plan_models(d: _Deploy) -> dict[str, Any]:
    """Name every model (by the serving layout: :mod:`~servicemaker.deploy.layout`); decide write / replace / keep;
    refuse two different models under one name."""
    repo = d.opts.repo
    if repo.exists() and not repo.is_dir():
        raise UsageError(f"{repo} exists and is not a folder", hint="give a model repository folder")
    layout.check(d, _streaming_steps)
    for rmir in d.rmirs:
        names = {c: _model_name(cs, d.target) for c, cs in rmir.spec.components.items()}
        names.update({key: rmir.spec.name + key[len(ENSEMBLE):] for key in rmir.spec.entry_ensembles()})
        if layout.fused(d):
            _plan_fused(d, rmir, names)
            continue
        for comp, name in names.items():
            plan = ModelPlan(name=name, rmir=rmir, component=comp, fingerprint=_fingerprint(rmir, comp, d.target))
            other = d.models.get(name)
            if other is not None:
                if other.fingerprint != plan.fingerprint:
                    raise UsageError(f"model {name} would come from both {other.rmir.arg.shown} and "
                                     f"{rmir.arg.shown}, differently",
                                     hint="give one of the pipelines another --name/--domain_name at svc-build")
                rmir.models[comp] = other
                continue
            if (repo / name).exists():
                plan.action = "replace" if d.opts.force else "keep"
            rmir.models[comp] = plan
            d.models[name] = plan
    kept = sorted(m.name for m in d.models.values() if m.action == "keep")
    for name in kept:
        d.rep.step(f"Keeping existing model {name} (pass -f to replace it)")
    return {"models": {m.name: m.action for m in d.models.values()}, "serving": d.opts.serving}


def _plan_fused(d: _Deploy, rmir: RmirPlan, names: dict[str, str]) -> None:
    """One model under the pipeline's name; its components are planned (the network step stages their files) but
    are steps of that model, not models of the repository."""
    name = names[ENSEMBLE]
    plan = ModelPlan(name=name, rmir=rmir, component=ENSEMBLE,
                     fingerprint=hashlib.sha256(json.dumps([rmir.sha256, "fused", d.target]).encode()).hexdigest())
    other = d.models.get(name)
    if other is not None and other.fingerprint != plan.fingerprint:
        raise UsageError(f"model {name} would come from both {other.rmir.arg.shown} and {rmir.arg.shown}, "
                         "differently", hint="give one of the pipelines another --name/--domain_name at svc-build")
    if (d.opts.repo / name).exists():
        plan.action = "replace" if d.opts.force else "keep"
    rmir.models = {comp: ModelPlan(name=n, rmir=rmir, component=comp, action=plan.action)
                   for comp, n in names.items() if not is_ensemble(comp)}
    rmir.models[ENSEMBLE] = d.models[name] = other or plan
    left = layout.members_left(d, rmir)
    if left and plan.action != "keep":
        d.rep.warn(f"{name} is now one fused model; the ensemble layout's models {', '.join(left)} stay in the "
                   "repository unused: remove their folders")


def extract_artifacts(d: _Deploy) -> dict[str, Any]:
    """Decrypt and verify every artifact the written models need into the staging folder (not the graph nor the
    calibration data of a network the compile cache had)."""
    count = 0
    for rmir in d.rmirs:
        work = d.work(rmir)
        for comp, cs in rmir.spec.components.items():
            plan = rmir.models[comp]
            if plan.action == "keep" and cs.kind != "network":
                continue
            net = rmir.networks.get(comp)
            for role, ref in cs.artifacts.items():
                if net is not None and (role not in ("graph", "calibration_data", "gate_data") or net.hit):
                    continue  # the model config and LM config were checked by svc-build; Triton needs the graph
                d.rep.step(f"Extracting {ref.name}")
                if ref.source.endswith(".onnx.tar"):
                    target = work / f"{comp}-{role}"
                    target.mkdir(exist_ok=True)
                    stream = d.rep.track(rmir.reader.open(ref.name), f"Extracting {ref.name}", ref.size)
                    path = onnx_tar.extract(stream, target, f"{rmir.arg.shown}:{ref.name}", d.opts.limits)
                else:
                    # extract() checked the bytes against the manifest's digest (and the GCM tag); the manifest's
                    # digest must be the one the pipeline spec records
                    path = rmir.reader.extract(ref.name, work, as_name=f"{comp}-{role}")
                    if digest_of(rmir.reader.artifacts[ref.name]) != ref.sha256:
                        raise ValidationError(f"{rmir.arg.shown}: artifact {ref.name} does not match the sha256 its "
                                              "pipeline spec records", hint="the RMIR was altered; rebuild it")
                if net is not None and role == "graph":
                    net.graph_path = path
                elif net is not None:
                    net.sample_paths[role] = path
                else:
                    plan.files[_safe_dest(ref.source, role)] = path
                count += 1
    return {"artifacts": count}


def _runtime(rmir: RmirPlan) -> Any:
    """The family's handler module (copied into its Python-backend models as ``svc_handlers.py``)."""
    return importlib.import_module(f"servicemaker.runtime.{_family(rmir).runtime}")


def _handler(rmir: RmirPlan, comp: str) -> type[common.Handler]:
    name = rmir.pipeline.component(comp).handler
    assert name is not None
    return _runtime(rmir).HANDLERS[name]


def _spec_for(d: _Deploy, rmir: RmirPlan, comp: str) -> ModelConfigSpec:
    cs = rmir.spec.components[comp]
    component: Component = rmir.pipeline.component(comp)
    params = cs.params
    plan = rmir.models[comp]
    shared: dict[str, Any] = dict(name=plan.name, max_batch_size=int(params["max_batch_size"]),
                                  instance_count=int(params["instance_group_count"]),
                                  queue_delay_us=int(params["max_queue_delay_microseconds"]))
    if cs.kind == "network":
        sig, job = rmir.networks[comp].signature, _job(d, rmir, comp)
        assert sig is not None
        if not _family(rmir).network_batched(job):  # no batch axis: Triton sends each request as it came
            shared["max_batch_size"], shared["queue_delay_us"] = 0, None
        dims = (lambda t: t.triton_dims) if shared["max_batch_size"] else (lambda t: tuple(
            d if isinstance(d, int) else -1 for d in t.shape))
        ins = [TensorSpec(t.name, t.data_type, dims(t)) for t in sig.inputs]
        outs = [TensorSpec(t.name, t.data_type, dims(t)) for t in sig.outputs]
        label = "network" if len(rmir.networks) == 1 else f"{comp} network"
        comment = f"{rmir.spec.pipeline} {label} from {rmir.arg.path.name}, target {d.target}"
        if d.target == "onnxruntime-python":
            handler = _family(rmir).network_handler(job)
            ragged = _runtime(rmir).HANDLERS[handler].RAGGED
            ins = [TensorSpec(t.name, t.data_type, t.dims, ragged=t.name in ragged) for t in ins]
            return ModelConfigSpec(template="python", inputs=ins, outputs=outs, comment=comment,
                                   parameters={"handler": handler, "model": "model.onnx"}, **shared)
        return ModelConfigSpec(template=d.target, inputs=ins, outputs=outs, comment=comment,
                               instance_kind=d.instance_kind, **shared)
    handler_cls = _handler(rmir, comp)
    parameters = {"handler": component.handler or ""}
    for key, value in params.items():
        if key not in SERVING_PARAMS and value is not None:
            parameters[key] = str(value).lower() if isinstance(value, bool) else str(value)
    for role, ref in cs.artifacts.items():
        parameters[role] = _safe_dest(ref.source, role)
    parameters.update(_family(rmir).model_params(jobs(d, rmir), comp))
    sequence = handler_cls.SEQUENCE
    return ModelConfigSpec(
        template="python", comment=f"{rmir.spec.pipeline} {comp}: {component.help}",
        inputs=[TensorSpec(n, t, tuple(dims), optional=n in handler_cls.OPTIONAL) for n, t, dims in handler_cls.INPUTS],
        outputs=[TensorSpec(n, t, tuple(dims)) for n, t, dims in handler_cls.OUTPUTS],
        sequence_idle_us=int(float(params.get("idle_timeout_s", 60)) * 1_000_000) if sequence else None,
        decoupled=handler_cls.DECOUPLED, parameters=parameters, **shared)


def _ensemble_spec(rmir: RmirPlan, key: str) -> ModelConfigSpec:
    steps = [EnsembleStep(model_name=rmir.models[step.component].name, input_map=inputs,
                          output_map=dict(step.outputs)) for step, inputs in layout.wired_steps(rmir, key)]
    used = {step.component for step in rmir.spec.entry_ensembles()[key].steps}
    batch = min(int(rmir.spec.components[c].params["max_batch_size"]) for c in used)
    inputs, outputs = layout.ensemble_tensors(rmir, key)
    return ModelConfigSpec(name=rmir.models[key].name, template="ensemble", max_batch_size=batch,
                           comment=f"{rmir.spec.pipeline} ensemble from {rmir.arg.path.name}", inputs=inputs,
                           outputs=outputs, steps=steps)


def render_configs(d: _Deploy) -> dict[str, Any]:
    """Render every config.pbtxt from its template, parse it as ModelConfig, check each ensemble's wiring."""
    for rmir in d.rmirs:
        for comp, plan in rmir.models.items():
            if plan.config is not None:
                continue
            if layout.fused(d):
                if comp == ENSEMBLE:
                    plan.config = layout.fused_spec(rmir, lambda c, r=rmir: _spec_for(d, r, c))
                    plan.config_text, plan.parsed = render(plan.config)
                    network = rmir.models[next(iter(rmir.networks))]  # a fused pipeline has one network
                    plan.report, plan.cache = network.report, network.cache
                continue
            plan.config = _ensemble_spec(rmir, comp) if is_ensemble(comp) else _spec_for(d, rmir, comp)
            plan.config_text, plan.parsed = render(plan.config)
        if layout.fused(d):
            continue
        # Kept models are checked too: a kept model that no longer fits is reported, not silently wired in.
        members = {m.name: m.parsed for m in rmir.members().values()}
        for key in rmir.spec.entry_ensembles():
            problems = check_ensemble(rmir.models[key].parsed, members)
            if problems:
                raise ValidationError(f"the {rmir.models[key].name} ensemble would not load in Triton", problems,
                                      hint="this is a bug in servicemaker or the pipeline definition; report it")
    return {"configs": len([m for m in d.models.values() if m.action != "keep"])}


def write_models(d: _Deploy) -> dict[str, Any]:
    """Write config.pbtxt and the version folder of every model (Python glue, handlers, artifacts)."""
    glue = resources.files("servicemaker.templates") / "python" / "model.py"
    for plan in d.live():
        folder = d.staged(plan)
        (folder.parent / "config.pbtxt").write_text(plan.config_text, encoding="utf-8")
        assert plan.config is not None
        if plan.config.template == "python":
            (folder / "model.py").write_text(glue.read_text(encoding="utf-8"), encoding="utf-8")
            shutil.copyfile(common.__file__, folder / COMMON_FILE)
            shutil.copyfile(_runtime(plan.rmir).__file__, folder / HANDLER_FILE)
            for name in _family(plan.rmir).runtime_support:  # modules the handlers import, as svc_<name>.py
                module = importlib.import_module(f"servicemaker.runtime.{name}")
                shutil.copyfile(module.__file__, folder / f"svc_{name}.py")
        if plan.config.parameters.get("handler") == layout.CHAIN_HANDLER:
            layout.write_members(d, plan, folder)
        for dest, src in plan.files.items():
            shutil.copyfile(src, folder / dest)
        for path in folder.parent.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        folder.parent.chmod(0o755)
    return {"models": sorted(m.name for m in d.live())}


def _requirements(d: _Deploy) -> list[str]:
    needed: set[str] = set()
    for plan in d.live():
        if plan.config is not None and plan.config.template == "python":
            family = _family(plan.rmir)
            handler = plan.config.parameters.get("handler", "")
            steps = [(s["handler"], s["params"]) for s in json.loads(plan.config.parameters[layout.CHAIN_PARAM])] \
                if handler == layout.CHAIN_HANDLER else [(handler, plan.config.parameters)]
            for name, params in steps:
                needed.update(family.requirements_for(name, params))
    return sorted(needed)


def commit(d: _Deploy) -> dict[str, Any]:
    """Move the finished model folders into the repository (swapped in one by one under a journal, or the whole new
    repository at once: :mod:`~servicemaker.deploy.staging`); merge requirements.txt. The commit completes after
    deploy_status.json is written."""
    assert d.staging is not None
    repo = d.opts.repo
    live = d.live()
    moved: dict[str, bool] = {}
    try:
        root = d.staging.begin([p.name for p in live], (REQUIREMENTS_FILE, STATUS_FILE))
        for plan in live:
            moved[plan.name] = d.staging.move_in(plan.name)
        req = root / REQUIREMENTS_FILE
        lines = set(_requirements(d))
        if req.exists():
            lines |= {ln.strip() for ln in req.read_text(encoding="utf-8").splitlines() if ln.strip()}
        if lines:
            text = "".join(sorted(f"{ln}\n" for ln in lines if not ln.startswith("#")))
            d.staging.write_file(REQUIREMENTS_FILE, text)
    except OSError as err:
        try:
            d.staging.undo()  # put the repository back as it was
        except OSError:
            pass  # the journal stays: closing the staging folder, or else the next deploy, rolls back
        raise ServiceMakerError(f"cannot write model folders into {repo}: {err}",
                                hint="check the folder's permissions and free space") from None
    return {"written": [n for n, had in moved.items() if not had], "replaced": [n for n, had in moved.items() if had]}


STEPS: list[tuple[str, Callable[[_Deploy], dict[str, Any]]]] = [
    ("choose_target", choose_target),
    ("read_rmirs", read_rmirs),
    ("plan_models", plan_models),
    ("lookup_cache", lookup_cache),
    ("extract_artifacts", extract_artifacts),
    ("check_graphs", check_graphs),
    ("prepare_networks", prepare_networks),
    ("render_configs", render_configs),
    ("write_models", write_models),
    ("commit", commit),
]


def deploy(opts: DeployOptions, reporter: Reporter | None = None) -> DeployResult:
    """Run svc-deploy. On any error the repository is left as it was."""
    rep = reporter or SilentReporter()
    started = time.perf_counter()
    if not opts.rmirs:
        raise UsageError("no RMIR given", hint="svc-deploy IN.rmir[:KEY]... REPOSITORY")
    with ExitStack() as stack:
        d = _Deploy(opts, rep, stack)
        d.staging = Staging(opts.repo)
        stack.callback(d.staging.close)  # removes it; rolls back a commit that did not finish
        sweep(opts.repo, own=d.staging.path, report=rep.step)  # what killed deploys left
        for name, step in STEPS:
            t0 = time.perf_counter()
            if name not in ("choose_target", "read_rmirs", "plan_models", "commit") and not d.live():
                d.results.append(StepResult(name, "SKIPPED", 0.0, {"reason": "every model exists; pass -f"}))
                continue
            try:
                detail = step(d)
            except ServiceMakerError:
                d.results.append(StepResult(name, "FAILED", time.perf_counter() - t0))
                raise
            d.results.append(StepResult(name, "OK", time.perf_counter() - t0, detail))
        seconds = time.perf_counter() - started
        try:
            write_status(d, seconds)
        except OSError as err:
            raise ServiceMakerError(f"cannot write {STATUS_FILE} into {opts.repo}: {err}",
                                    hint="check the folder's permissions and free space") from None
        d.staging.finish()
        committed = d.results[-1].detail
        return DeployResult(repo=opts.repo, target=d.target, written=committed.get("written", []),
                            replaced=committed.get("replaced", []),
                            kept=sorted(m.name for m in d.models.values() if m.action == "keep"),
                            steps=d.results, seconds=seconds,
                            cache={m.name: m.cache["status"] for m in d.live() if m.cache})


__all__ = ["STATUS_FILE", "STEPS", "TARGETS", "DeployOptions", "DeployResult", "StepResult", "deploy"]
