"""The network steps of svc-deploy: check each graph (``check_graphs``) and compile it for the target
(``prepare_networks``: fusion, sparsity, INT8, accuracy gate, optionally a TensorRT engine), reusing the compile
cache (:mod:`servicemaker.deploy.cache`) when an earlier deploy compiled the same network the same way.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from servicemaker import __version__
from servicemaker.deploy import accuracy, cache, optimize, tensorrt
from servicemaker.deploy import graph as graphs
from servicemaker.deploy.state import ModelPlan, RmirPlan, _Deploy
from servicemaker.eff.codecs import encryption_of
from servicemaker.errors import UsageError
from servicemaker.family import Family, NetworkJob
from servicemaker.pipeline import check_overrides
from servicemaker.pipelines import get_family

#: ``nn`` parameters svc-deploy may override (``--nn.<param>=VALUE``): the optimizing compiler's options
COMPILER_PARAMS = ("precision", "fuse", "fusion_ops", "sparsity", "calibration_method", "accuracy_tolerance",
                   "max_workspace_size")
#: component parameters that only tell Triton how to serve a model: they never change the compiled network
SERVING_ONLY = frozenset({"instance_group_count", "max_queue_delay_microseconds", "idle_timeout_s"})
#: the packages whose versions the network step's output depends on
COMPILER_DISTS = ("onnx", "onnxruntime", "onnx-graphsurgeon", "numpy")


def _safe_dest(source: str, role: str) -> str:
    """A version-folder file name for an artifact: the role plus the source's extension."""
    ext = Path(source).suffix
    ext = ext if ext[1:].isalnum() and len(ext) <= 8 else ""
    return f"{role}{ext}"


def _family(rmir: RmirPlan) -> Family:
    return get_family(rmir.pipeline)


def _nn_params(d: _Deploy, rmir: RmirPlan) -> dict[str, Any]:
    """The nn component's parameters as recorded at svc-build, with svc-deploy's overrides applied."""
    params = dict(rmir.spec.components["nn"].params)
    if d.opts.overrides:
        bad = [k for k in d.opts.overrides if not k.startswith("nn.") or k[3:] not in COMPILER_PARAMS]
        if bad:
            raise UsageError(f"svc-deploy cannot override {', '.join('--' + k for k in bad)}",
                             hint="svc-deploy takes " + ", ".join(f"--nn.{p}" for p in COMPILER_PARAMS)
                                  + "; other parameters are set at svc-build")
        for (_, name), value in check_overrides(rmir.pipeline, d.opts.overrides).items():
            params[name] = value
    return params


def _job(d: _Deploy, rmir: RmirPlan) -> NetworkJob:
    """The network as the family's hooks see it (made once per RMIR, after the artifacts are staged)."""
    if rmir.job is None:
        assert rmir.graph_path is not None
        files = {comp: {role: plan.files[_safe_dest(ref.source, role)]
                        for role, ref in rmir.spec.components[comp].artifacts.items()
                        if _safe_dest(ref.source, role) in plan.files}
                 for comp, plan in rmir.models.items() if comp != "ensemble"}
        rmir.job = NetworkJob(
            where=f"{rmir.arg.shown}: graph {rmir.spec.components['nn'].artifacts['graph'].source}",
            spec=rmir.spec, pipeline=rmir.pipeline, graph_path=rmir.graph_path, target=d.target,
            params=_nn_params(d, rmir), files=files, calibration_path=rmir.calibration_path,
            model_names={comp: plan.name for comp, plan in rmir.models.items()})
    return rmir.job


def check_graphs(d: _Deploy) -> dict[str, Any]:
    """Read each network's signature; its family checks it fits the pipeline."""
    out: dict[str, Any] = {}
    for rmir in d.rmirs:
        job = _job(d, rmir)
        model = graphs.load(job.graph_path)
        sig = _family(rmir).check_graph(job, model)
        rmir.signature = job.signature = sig
        out[rmir.spec.name] = {"inputs": [t.name for t in sig.inputs], "outputs": [t.name for t in sig.outputs]}
        del model
    return out


# --- the compile cache's key -----------------------------------------------------------------------------------------

def _versions() -> dict[str, str]:
    out = {"servicemaker": __version__}
    for dist in COMPILER_DISTS:
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def key_inputs(d: _Deploy, rmir: RmirPlan, opts: optimize.CompileOptions,
               settings: tensorrt.EngineSettings | None) -> dict[str, Any]:
    """Everything that determines a network's compiled output: every component's parameters (serving-only ones
    aside; the nn component's with svc-deploy's overrides) and artifact digests (the graph, calibration data, and
    what the family's sample feeds, gate and profile read: vocabularies, featurizer settings, ...), the compiler
    options, the target, the engine settings and builder, and the versions of the code that compiles. Not the
    RMIR's file name, model or ensemble names, the repository, -f, or how the key was given."""
    components = {}
    for name, cs in rmir.spec.components.items():
        params = _job(d, rmir).params if name == "nn" else cs.params
        components[name] = {
            "kind": cs.kind, "handler": rmir.pipeline.component(name).handler,
            # a parameter naming a bound file is covered by that artifact's digest
            "params": {k: v for k, v in params.items() if k not in SERVING_ONLY and k not in cs.artifacts},
            "artifacts": {role: ref.sha256 for role, ref in cs.artifacts.items()}}
    inputs: dict[str, Any] = {"pipeline": rmir.spec.pipeline, "target": d.target, "components": components,
                              "compile": dataclasses.asdict(opts), "versions": _versions()}
    if settings is not None:
        engine = dataclasses.asdict(settings)
        engine.pop("timing_cache")  # speeds the build up; the engine does not depend on it
        inputs["engine"] = engine
        inputs["builder"] = tensorrt.fingerprint()
    return inputs


def _protection(rmir: RmirPlan) -> cache.Protection | None:
    """Protected entries for an RMIR holding any encrypted artifact (the key is the one that opened it)."""
    if not any(encryption_of(props) for props in rmir.reader.artifacts.values()):
        return None
    key = rmir.reader.ring.key
    assert key is not None  # the reader needed it to open the encrypted artifacts
    return cache.Protection(key)


@dataclass
class Outcome:
    """Where one network came from, as deploy_status.json records it."""

    status: str                     # hit | miss | rebuilt | off
    key: str | None = None
    store: str | None = None        # the store a hit came from
    published: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.key:
            out["key"] = self.key
        if self.store:
            out["store"] = self.store
        if self.published:
            out["published"] = list(self.published)
        return out


# --- prepare_networks ------------------------------------------------------------------------------------------------

def _settings(d: _Deploy, job: NetworkJob, family: Family, precision: str) -> tensorrt.EngineSettings | None:
    if d.target != "tensorrt":
        return None
    params = job.params
    return tensorrt.EngineSettings(
        profile=family.engine_profile(job), fp16=precision in ("fp16", "int8"), int8=precision == "int8",
        sparse_weights=params.get("sparsity") == "2:4", workspace_mib=int(params.get("max_workspace_size", 4096)),
        timing_cache=cache.root() / "tensorrt-timing.cache")


def _compile(d: _Deploy, rmir: RmirPlan, plan: ModelPlan, opts: optimize.CompileOptions,
             settings: tensorrt.EngineSettings | None, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Compile the network into ``folder``; the optimization report and the step's figures."""
    job, family = _job(d, rmir), _family(rmir)
    precision = str(job.params.get("precision", "fp16"))
    # Loaded again rather than kept from check_graphs: only one graph is in memory at a time.
    with d.rep.activity(f"Folding constants of {plan.name}"):
        folded = family.network_graph(job, graphs.fold_constants(graphs.load(job.graph_path)))
    feeds = family.sample_feeds(job)
    samples = feeds.gate

    def family_gate(reference: Any, optimized: Any, given: Any) -> Any:
        return family.gate(job, reference, optimized, given)

    try:
        compiled, report = optimize.compile_network(
            folded, opts, feeds.calibration, samples, d.work(rmir) / "optimize", d.rep.activity, family_gate)
    except optimize.AccuracyError as err:
        raise optimize.AccuracyError(f"{plan.name}: {err.message}", hint=err.hint) from None
    if precision == "int8":
        report["int8"]["calibration_data"] = feeds.source
    if precision == "fp16" and d.target != "tensorrt":
        report["note"] = "fp16 applies to TensorRT engines; the ONNX Runtime targets run FP32 here"
    if settings is not None:
        onnx_path = d.work(rmir) / "model.onnx"
        graphs.save(compiled, onnx_path)
        with d.rep.activity(f"Building TensorRT engine for {plan.name}"):
            engine = tensorrt.build_engine(onnx_path, folder / "model.plan", settings)
        report["engine"] = engine
        report["engine_accuracy"] = _engine_gate(d, plan, folded, folder / "model.plan", samples, opts, family_gate)
        detail = {"file": "model.plan", "bytes": engine["bytes"]}
    else:
        written = graphs.save(compiled, folder / "model.onnx")
        detail = {"file": "model.onnx", "bytes": sum(p.stat().st_size for p in written),
                  "nodes": len(compiled.graph.node)}
    detail.update(_summary(report))
    return report, detail


def prepare_networks(d: _Deploy) -> dict[str, Any]:
    """Optimize each graph (fusion, sparsity, INT8, accuracy gate) and write it for the target: model.onnx, or a
    TensorRT model.plan with its metadata beside it; or take both from the compile cache."""
    out: dict[str, Any] = {}
    for rmir in d.rmirs:
        plan = rmir.models["nn"]
        if plan.action == "keep":
            continue
        assert rmir.graph_path is not None and rmir.signature is not None
        started = time.perf_counter()
        job, family = _job(d, rmir), _family(rmir)
        params = job.params
        precision = str(params.get("precision", "fp16"))
        opts = optimize.CompileOptions(
            target=d.target, precision=precision if d.target == "tensorrt" or precision == "int8" else "fp32",
            fuse=bool(params.get("fuse", True)), fusion_ops=str(params.get("fusion_ops", "auto")),
            sparsity=str(params.get("sparsity", "none")),
            calibration_method=str(params.get("calibration_method", "percentile")),
            accuracy_tolerance=float(params.get("accuracy_tolerance", 0.01)),
            allow_accuracy_drop=d.opts.allow_accuracy_drop, int8_exclude=family.int8_exclude(job))
        settings = _settings(d, job, family, precision)
        folder = d.staged(plan)
        store = d.cache
        if store is None:
            outcome = Outcome("off")
            report, detail = _compile(d, rmir, plan, opts, settings, folder)
        else:
            protection = _protection(rmir)
            key = cache.compile_key(key_inputs(d, rmir, opts, settings), protection)
            meta, source, corrupt = store.lookup(key, folder, protection)
            if meta is not None:
                d.rep.step(f"Reusing the compiled network of {plan.name} from the {source} compile cache")
                outcome = Outcome("hit", key, store=source)
                report, detail = meta["report"], meta["detail"]
            else:
                report, detail = _compile(d, rmir, plan, opts, settings, folder)
                files = {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}
                published = store.publish(key, files, {"report": report, "detail": detail}, protection)
                outcome = Outcome("rebuilt" if corrupt else "miss", key, published=tuple(published))
        plan.report = report
        plan.cache = outcome.record()
        d.cache_status[plan.name] = outcome.status
        out[plan.name] = {**detail, "cache": plan.cache, "seconds": round(time.perf_counter() - started, 3)}
    return out


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of an optimization report, for the step's line in deploy_status.json."""
    summary: dict[str, Any] = {"precision": report.get("precision")}
    fusion = report.get("fusion", {}).get("plugins", {})
    if fusion:
        summary["fused"] = {k: v.get("fused", 0) for k, v in fusion.items()}
    if "sparsity" in report:
        summary["pruned_2_4"] = report["sparsity"]["pruned"]
    if "int8" in report:
        summary["int8_layers"] = report["int8"]["quantized"]
        summary["kept_fp32"] = len(report["int8"]["kept_fp32"])
    gate = report.get("accuracy", {})
    if "cosine" in gate:
        measure = gate.get("gated_by", "cosine")  # a family's own figure (e.g. cer_vs_fp32) or the cosine
        summary["accuracy"] = {k: gate[k] for k in ("status", "gated_by", measure, "cosine", "top1_agreement",
                                                    "max_abs_diff") if k in gate}
    return summary


def _engine_gate(d: _Deploy, plan: ModelPlan, original: Any, engine: Path, samples: list[dict[str, Any]],
                 opts: optimize.CompileOptions, extra: accuracy.ExtraGate | None = None) -> dict[str, Any]:
    """Run the built engine itself on the gate's samples against the FP32 graph in ONNX Runtime."""
    if tensorrt.use_rtx():
        return {"status": "not run", "reason": "TensorRT-RTX engines are only built here, not run"}
    names = [o.name for o in original.graph.output]
    with d.rep.activity(f"Checking {plan.name}'s engine against the FP32 graph"):
        got = tensorrt.run_engine(engine, samples, names)
        gate = accuracy.compare(optimize.run(original, samples), got, samples, names, extra)
    result = gate.as_dict(opts.accuracy_tolerance)
    if not gate.within(opts.accuracy_tolerance) and not opts.allow_accuracy_drop:
        raise optimize.AccuracyError(
            f"{plan.name}: the TensorRT engine loses more accuracy than nn.accuracy_tolerance="
            f"{opts.accuracy_tolerance} allows: {gate.summary()}",
            hint="choose --nn.precision=fp32 or raise --nn.accuracy_tolerance, or pass --allow-accuracy-drop")
    return result


__all__ = ["COMPILER_PARAMS", "check_graphs", "key_inputs", "prepare_networks"]
