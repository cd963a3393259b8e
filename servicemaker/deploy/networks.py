"""The network steps of svc-deploy: check each graph (``check_graphs``) and compile it for the target
(``prepare_networks``: fusion, sparsity, INT8, accuracy gate, optionally a TensorRT engine), reusing the compile
cache (:mod:`servicemaker.deploy.cache`) when an earlier deploy compiled the same network the same way. The cache is
asked first (``lookup_cache``, before any artifact is extracted): its key is computed from the pipeline spec's
digests, the parameters, the target and the builder, and a hit brings back with the compiled files the graph's
signature and the family's state (``Family.saved_state``), so the graph is neither extracted nor loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import time
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from servicemaker import __version__
from servicemaker.deploy import accuracy, cache, optimize, tensorrt
from servicemaker.deploy import graph as graphs
from servicemaker.deploy.state import ModelPlan, NetworkPlan, RmirPlan, _Deploy
from servicemaker.eff.codecs import encryption_of
from servicemaker.errors import UsageError
from servicemaker.family import Family, NetworkJob
from servicemaker.pipeline import check_overrides
from servicemaker.pipelines import get_family

#: network parameters svc-deploy may override (``--<network>.<param>=VALUE``: ``--nn.precision``,
#: ``--vocoder.precision``): the optimizing compiler's options
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


def check_overrides_apply(d: _Deploy) -> None:
    """svc-deploy's ``--<network>.<param>`` overrides: compiler options of a network component of some RMIR."""
    if not d.opts.overrides:
        return
    networks = {c for rmir in d.rmirs for c in rmir.networks}
    bad = [k for k in d.opts.overrides
           if k.partition(".")[0] not in networks or k.partition(".")[2] not in COMPILER_PARAMS]
    if bad:
        names = sorted(networks) or ["nn"]
        raise UsageError(f"svc-deploy cannot override {', '.join('--' + k for k in bad)}",
                         hint="svc-deploy takes " + ", ".join(f"--{n}.{p}" for n in names for p in COMPILER_PARAMS)
                              + "; other parameters are set at svc-build")


def _network_params(d: _Deploy, rmir: RmirPlan, comp: str) -> dict[str, Any]:
    """Network ``comp``'s parameters as recorded at svc-build, with svc-deploy's overrides of it applied."""
    params = dict(rmir.spec.components[comp].params)
    mine = {k: v for k, v in d.opts.overrides.items() if k.partition(".")[0] == comp}
    for (_, name), value in check_overrides(rmir.pipeline, mine).items():
        params[name] = value
    return params


def _job(d: _Deploy, rmir: RmirPlan, comp: str) -> NetworkJob:
    """Network ``comp`` as the family's hooks see it (made once; its staged files are those extracted so far: none
    before ``extract_artifacts``, and no graph on a compile cache hit)."""
    net = rmir.networks[comp]
    if net.job is None:
        net.job = NetworkJob(
            where=f"{rmir.arg.shown}: graph {rmir.spec.components[comp].artifacts['graph'].source}",
            spec=rmir.spec, pipeline=rmir.pipeline, graph_path=None, target=d.target,
            params=_network_params(d, rmir, comp), files={},
            model_names={c: plan.name for c, plan in rmir.models.items()}, component=comp)
    job = net.job
    job.graph_path = net.graph_path
    job.calibration_path = net.sample_paths.get("calibration_data")
    job.gate_path = net.sample_paths.get("gate_data")
    job.files = {c: {role: plan.files[_safe_dest(ref.source, role)]
                     for role, ref in rmir.spec.components[c].artifacts.items()
                     if _safe_dest(ref.source, role) in plan.files}
                 for c, plan in rmir.members().items()}
    return job


def jobs(d: _Deploy, rmir: RmirPlan) -> dict[str, NetworkJob]:
    """Every network of ``rmir`` as the family's hooks see it, by component."""
    return {comp: _job(d, rmir, comp) for comp in rmir.networks}


def check_graphs(d: _Deploy) -> dict[str, Any]:
    """Read each network's signature; its family checks it fits the pipeline. A network from the compile cache
    was checked when it was compiled (the key covers every artifact and parameter): its signature came with it."""
    out: dict[str, Any] = {}
    for rmir in d.rmirs:
        for comp, net in rmir.networks.items():
            job = _job(d, rmir, comp)
            if not net.hit:
                assert job.graph_path is not None
                model = graphs.load(job.graph_path)
                net.signature = job.signature = _family(rmir).check_graph(job, model)
                del model
            sig = net.signature
            assert sig is not None
            entry = {"inputs": [t.name for t in sig.inputs], "outputs": [t.name for t in sig.outputs]}
            if net.hit:
                entry["from"] = "compile cache"
            # one network per RMIR reads as before: by the pipeline's name
            out[rmir.spec.name if len(rmir.networks) == 1 else f"{rmir.spec.name}:{comp}"] = entry
    return out


def _signature_record(sig: graphs.Signature) -> dict[str, Any]:
    return {side: [[t.name, t.data_type, list(t.shape)] for t in getattr(sig, side)] for side in ("inputs", "outputs")}


def _signature_from(record: Any) -> graphs.Signature:
    """A Signature back from :func:`_signature_record`'s JSON; ValueError when it is not a well-formed one."""
    if not isinstance(record, dict) or set(record) != {"inputs", "outputs"}:
        raise ValueError("no graph signature")
    sides = []
    for side in ("inputs", "outputs"):
        tensors = record[side]
        if not isinstance(tensors, list) or not tensors:
            raise ValueError(f"the signature has no {side}")
        for t in tensors:
            if (not isinstance(t, list) or len(t) != 3 or not isinstance(t[0], str) or not t[0]
                    or t[1] not in graphs.ONNX_TO_TRITON.values() or not isinstance(t[2], list)
                    or not all((isinstance(x, int) and not isinstance(x, bool) and x > 0)
                               or (isinstance(x, str) and x) for x in t[2])):
                raise ValueError(f"a bad signature tensor {str(t)[:80]!r}")
        sides.append(tuple(graphs.GraphTensor(t[0], t[1], tuple(t[2])) for t in tensors))
    return graphs.Signature(*sides)


# --- the compile cache's key -----------------------------------------------------------------------------------------

#: servicemaker's packages whose code the compiled output depends on (the compiler, plugins, families, runtime)
CODE_PACKAGES = ("servicemaker", "servicemaker.pipelines", "servicemaker.plugins")


def code_digest(folders: tuple[Path, ...]) -> str:
    """sha256 over every source and data file below ``folders`` (relative names and bytes): a development checkout
    keeps its version number while its compiler changes, and must not reuse what an older compiler made."""
    digest = hashlib.sha256()
    for root in folders:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".txt", ".npz", ".j2",
                                                                                   ".yaml"))
        for path in files:
            digest.update(f"{root.name}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _own_code() -> str:
    folders: list[Path] = []
    for name in CODE_PACKAGES:
        folders.extend(Path(p) for p in importlib.import_module(name).__path__)
    return code_digest(tuple(dict.fromkeys(folders)))


def _versions() -> dict[str, str]:
    out = {"servicemaker": __version__, "servicemaker_code": _own_code()}
    for dist in COMPILER_DISTS:
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def key_inputs(d: _Deploy, rmir: RmirPlan, comp: str, opts: optimize.CompileOptions,
               settings: tensorrt.EngineSettings | None) -> dict[str, Any]:
    """Everything that determines network ``comp``'s compiled output: every component's parameters (serving-only
    ones aside; the network's own with svc-deploy's overrides) and artifact digests (the graph, calibration data,
    and what the family's sample feeds, gate and profile read: vocabularies, featurizer settings, ...), which
    network, the compiler options, the target, the engine settings and builder, and the versions of the code that
    compiles. Not the RMIR's file name, model or ensemble names, the repository, -f, or how the key was given."""
    components = {}
    for name, cs in rmir.spec.components.items():
        params = _job(d, rmir, comp).params if name == comp else cs.params
        components[name] = {
            "kind": cs.kind, "handler": rmir.pipeline.component(name).handler,
            # a parameter naming a bound file is covered by that artifact's digest
            "params": {k: v for k, v in params.items() if k not in SERVING_ONLY and k not in cs.artifacts},
            "artifacts": {role: ref.sha256 for role, ref in cs.artifacts.items()}}
    inputs: dict[str, Any] = {"pipeline": rmir.spec.pipeline, "target": d.target, "components": components,
                              "compile": dataclasses.asdict(opts), "versions": _versions()}
    if comp != "nn":  # the key of a pipeline's one network (nn) reads as before networks were named in it
        inputs["network"] = comp
    if settings is not None:
        engine = dataclasses.asdict(settings)
        engine.pop("timing_cache")  # speeds the build up; the engine does not depend on it
        # the profile is the family's function of the graph's signature and the parameters, all in the key (it is
        # not known before the graph is read, and the key is needed before that)
        engine.pop("profile")
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
    detail: dict[str, Any] = field(default_factory=dict)   # the network step's figures
    protection: cache.Protection | None = None
    seconds: float = 0.0                                    # spent in lookup_cache

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

def _settings(d: _Deploy, job: NetworkJob, family: Family, profile: bool = True) -> tensorrt.EngineSettings | None:
    """The engine settings (None off the tensorrt target); ``profile=False``: without the optimization profile,
    which needs the graph's signature (the compile key leaves it out)."""
    if d.target != "tensorrt":
        return None
    params = job.params
    precision = str(params.get("precision", "fp16"))
    return tensorrt.EngineSettings(
        profile=family.engine_profile(job) if profile else {}, fp16=precision in ("fp16", "int8"),
        int8=precision == "int8", sparse_weights=params.get("sparsity") == "2:4",
        workspace_mib=int(params.get("max_workspace_size", 4096)), timing_cache=cache.root() / "tensorrt-timing.cache")


def _compile_options(d: _Deploy, job: NetworkJob, family: Family) -> optimize.CompileOptions:
    params = job.params
    precision = str(params.get("precision", "fp16"))
    return optimize.CompileOptions(
        target=d.target, precision=precision if d.target == "tensorrt" or precision == "int8" else "fp32",
        fuse=bool(params.get("fuse", True)), fusion_ops=str(params.get("fusion_ops", "auto")),
        sparsity=str(params.get("sparsity", "none")),
        calibration_method=str(params.get("calibration_method", "percentile")),
        accuracy_tolerance=float(params.get("accuracy_tolerance", 0.01)),
        allow_accuracy_drop=d.opts.allow_accuracy_drop, int8_exclude=family.int8_exclude(job))


def _compile(d: _Deploy, rmir: RmirPlan, comp: str, plan: ModelPlan, opts: optimize.CompileOptions,
             settings: tensorrt.EngineSettings | None, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Compile network ``comp`` into ``folder``; the optimization report and the step's figures."""
    job, family = _job(d, rmir, comp), _family(rmir)
    work = d.work(rmir) / comp
    precision = str(job.params.get("precision", "fp16"))
    # Loaded again rather than kept from check_graphs: only one graph is in memory at a time.
    with d.rep.activity(f"Folding constants of {plan.name}"):
        loaded = graphs.load(job.graph_path)
        repaired = graphs.remove_optionals(loaded)
        folded = family.network_graph(job, graphs.fold_constants(loaded))
        del loaded
    feeds = family.sample_feeds(job)
    samples = feeds.gate

    def family_gate(reference: Any, optimized: Any, given: Any) -> Any:
        return family.gate(job, reference, optimized, given)

    try:
        compiled, report = optimize.compile_network(
            folded, opts, feeds.calibration, samples, work / "optimize", d.rep.activity, family_gate)
    except optimize.AccuracyError as err:
        raise optimize.AccuracyError(f"{plan.name}: {err.message}", hint=err.hint) from None
    report.update(job.state.pop("report", {}))  # what the family's network_graph did to the graph
    if repaired:
        report["repaired"] = {"optionals_removed": repaired,
                              "why": "the graph carried an always-given input as an ONNX optional, untyped (NeMo "
                                     "3.0's ragged FastPitch export, NeMo issue 9104): ONNX Runtime, TensorRT and "
                                     "onnx-graphsurgeon refuse it"}
    if precision == "int8":
        report["int8"]["calibration_data"] = feeds.source
    if precision == "fp16" and d.target != "tensorrt":
        report["note"] = "fp16 applies to TensorRT engines; the ONNX Runtime targets run FP32 here"
    if settings is not None:
        work.mkdir(parents=True, exist_ok=True)
        onnx_path = work / "model.onnx"
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


def lookup_cache(d: _Deploy) -> dict[str, Any]:
    """Ask the compile cache for each network to write, before any artifact is extracted. A hit writes the compiled
    files into the model's version folder and restores the graph's signature and the family's state from the entry
    (an entry whose stored signature or state is missing or malformed is dropped as corrupt, and compiled again)."""
    out: dict[str, Any] = {}
    for rmir in d.rmirs:
        for comp, net in rmir.networks.items():
            plan = rmir.models[comp]
            if plan.action == "keep" or d.cache is None:
                continue
            out[plan.name] = _lookup_one(d, rmir, comp, net, plan)
    return out


def _lookup_one(d: _Deploy, rmir: RmirPlan, comp: str, net: NetworkPlan, plan: ModelPlan) -> dict[str, Any]:
    started = time.perf_counter()
    job, family = _job(d, rmir, comp), _family(rmir)
    protection = _protection(rmir)
    key = cache.compile_key(key_inputs(d, rmir, comp, _compile_options(d, job, family),
                                       _settings(d, job, family, profile=False)), protection)
    restored: dict[str, Any] = {}

    def check(meta: dict[str, Any]) -> None:
        network = meta.get("network")
        if not isinstance(network, dict):
            raise ValueError("no network signature and state")
        restored.update(signature=_signature_from(network.get("signature")),
                        state=family.restore_state(job, network.get("state")))

    meta, source, corrupt = d.cache.lookup(key, d.staged(plan), protection, check)
    if meta is None:
        net.outcome = Outcome("rebuilt" if corrupt else "miss", key, protection=protection)
    else:
        d.rep.step(f"Reusing the compiled network of {plan.name} from the {source} compile cache")
        net.outcome = Outcome("hit", key, store=source, detail=meta["detail"])
        net.signature = job.signature = restored["signature"]
        job.state.update(restored["state"])
        plan.report = meta["report"]
    net.outcome.seconds = time.perf_counter() - started
    return net.outcome.record()


def prepare_networks(d: _Deploy) -> dict[str, Any]:
    """Optimize each graph (fusion, sparsity, INT8, accuracy gate) and write it for the target: model.onnx, or a
    TensorRT model.plan with its metadata beside it; and publish it to the compile cache. (A network the cache
    had is in place already: ``lookup_cache``.)"""
    out: dict[str, Any] = {}
    for rmir in d.rmirs:
        for comp, net in rmir.networks.items():
            plan = rmir.models[comp]
            if plan.action == "keep":
                continue
            started = time.perf_counter()
            outcome: Outcome = net.outcome or Outcome("off")
            if outcome.status != "hit":
                assert net.graph_path is not None and net.signature is not None
                job, family = _job(d, rmir, comp), _family(rmir)
                opts = _compile_options(d, job, family)
                settings = _settings(d, job, family)
                folder = d.staged(plan)
                plan.report, outcome.detail = _compile(d, rmir, comp, plan, opts, settings, folder)
                if d.cache is not None:
                    assert outcome.key is not None
                    files = {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}
                    network = {"signature": _signature_record(net.signature), "state": family.saved_state(job)}
                    outcome.published = tuple(d.cache.publish(
                        outcome.key, files, {"report": plan.report, "detail": outcome.detail, "network": network},
                        outcome.protection))
            plan.cache = outcome.record()
            seconds = outcome.seconds + time.perf_counter() - started
            out[plan.name] = {**outcome.detail, "cache": plan.cache, "seconds": round(seconds, 3)}
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


__all__ = ["COMPILER_PARAMS", "check_graphs", "check_overrides_apply", "jobs", "key_inputs", "lookup_cache",
           "prepare_networks"]
