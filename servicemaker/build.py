"""svc-build: validate model exports against their schemas and bundle them, with a pipeline spec, into an RMIR.

The work is a fixed order of checks, then one streaming pass that writes the RMIR:

1. resolve the pipeline and type-check the ``--<component>.<param>`` overrides;
2. open every input (the archive reader's safety checks), assign each to an input slot by model class;
3. validate every input against its model-class schema, bind artifacts to components, resolve parameters —
   collecting every violation before failing;
4. stream each artifact (decrypting, hashing, re-encrypting if the output has a key) into a temporary file and
   rename it into place. Nothing is left behind on failure.

Every ONNX graph is scanned without loading it (:mod:`servicemaker.onnx_scan`): a ``.onnx.tar`` in step 3, while
its members are checked; a plain ``.onnx`` in step 4, as it is copied (no second pass over a large graph). A
network's graph must then fit its pipeline (the family's ``check_scanned_graph``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Protocol

from servicemaker import __version__, onnx_scan, yamlio
from servicemaker.eff import onnx_tar
from servicemaker.eff.codecs import KeyRing, SaltTable, digest_of
from servicemaker.eff.limits import DEFAULT_LIMITS, Limits
from servicemaker.eff.reader import EffReader
from servicemaker.eff.writer import DEFAULT_COMPRESSLEVEL, EffWriter
from servicemaker.errors import (NotFoundError, OutputExistsError, UsageError,
                                 ValidationError)
from servicemaker.keys import ArchiveArg, fallback_key
from servicemaker.pipeline import Bind, InputSlot, Pipeline, check_overrides, config_value
from servicemaker.pipelines import FAMILIES, get_pipeline, pipelines_for_class
from servicemaker.schema import class_name, load_schemas, strip_nemo
from servicemaker.spec import (SPEC_KEY, SPEC_VERSION, ArtifactRef, ComponentSpec, InputSpec, PipelineSpec, Provenance,
                               not_plain)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: props that describe an artifact's encryption in its source archive; not carried into the RMIR
_CODEC_PROPS = {"encryption", "sha256", "hmac_sha256", "size", "kdf", "kdf_n", "kdf_r", "kdf_p", "salt", "nonce",
                "key_check", "component", "source"}
#: metadata of an input recorded in the spec
_INPUT_METADATA = ("format_version", "min_nemo_version", "runtime", "description", "onnx_archive_format")
MAX_OPTION_FILE_BYTES = 8 * 1024 ** 3  # n-gram LMs are large; option files are streamed


class Reporter(Protocol):
    def step(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def track(self, stream: Any, label: str, total: int) -> Any: ...
    def activity(self, label: str) -> ContextManager[None]: ...


class SilentReporter:
    def step(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def track(self, stream: Any, label: str, total: int) -> Any:
        return stream

    def activity(self, label: str) -> ContextManager[None]:
        return nullcontext()


@dataclass
class BuildOptions:
    pipeline: str
    output: ArchiveArg
    inputs: list[ArchiveArg]
    force: bool = False
    name: str | None = None
    domain_name: str | None = None
    language_code: str | None = None
    max_batch_size: int | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    salts: SaltTable | None = None
    compresslevel: int = DEFAULT_COMPRESSLEVEL
    limits: Limits = DEFAULT_LIMITS


@dataclass
class BuildResult:
    path: Path
    spec: PipelineSpec
    seconds: float
    artifact_bytes: int


@dataclass
class _Input:
    arg: ArchiveArg
    reader: EffReader
    model_class: str
    slot: InputSlot | None = None
    config: Any = None


def _check_name(value: str | None, option: str) -> None:
    if value is not None and not NAME_RE.match(value):
        raise UsageError(f"{option}={value!r} is not a valid Triton model name part",
                         hint="use letters, digits, '_', '-' and '.', starting with a letter or digit")


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _match(artifacts: dict[str, Any], pattern: str) -> list[str]:
    names = [n for n in artifacts if fnmatch.fnmatchcase(n, pattern)]
    if not names and pattern.endswith(".onnx"):
        names = [n for n in artifacts if fnmatch.fnmatchcase(n, pattern + ".tar")]
    return names


def _assign_slots(pipeline: Pipeline, inputs: list[_Input]) -> list[str]:
    problems: list[str] = []
    if pipeline.ordered_inputs:
        got = [i.model_class for i in inputs]
        want = [s.model_classes for s in pipeline.inputs]
        if len(got) == len(want) and not all(g in w for g, w in zip(got, want)) and \
                all(any(g in w for g in got) for w in want):
            order = ", then ".join("/".join(w) for w in want)
            return [f"the inputs are {', '.join(got)}: pipeline {pipeline.name} takes {order}, in that order "
                    f"(as riva-build): svc-build {pipeline.name} OUT.rmir " +
                    " ".join(f"{s.name}.riva" for s in pipeline.inputs)]
    free = list(pipeline.inputs)
    for item in inputs:
        slot = next((s for s in free if item.model_class in s.model_classes), None)
        if slot is None:
            others = [p for p in pipelines_for_class(item.model_class) if p != pipeline.name]
            wanted = ", ".join(c for s in free for c in s.model_classes) or "nothing more"
            msg = (f"{item.arg.shown} is a {item.model_class or 'model of unknown class'}; pipeline {pipeline.name} "
                   f"takes {wanted}")
            if others:
                msg += f" (a {item.model_class} builds with: svc-build {others[0]} ...)"
            problems.append(msg)
            continue
        free.remove(slot)
        item.slot = slot
    return problems


def _resolve_binds(pipeline: Pipeline, by_slot: dict[str, _Input]) -> tuple[dict[str, dict[str, tuple[str, str]]], list[str]]:
    """component → role → (slot, artifact name), and the violations found."""
    problems: list[str] = []
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for comp in pipeline.components:
        out[comp.name] = {}
        for b in comp.binds:
            item = by_slot[b.input]
            found = _bind_one(b, item, problems, comp.name)
            if found is not None:
                out[comp.name][b.role] = (b.input, found)
    return out, problems


def _bind_one(b: Bind, item: _Input, problems: list[str], comp: str) -> str | None:
    artifacts = item.reader.artifacts
    where = item.arg.shown
    if b.config_key is not None:
        value = config_value(item.config, b.config_key)
        if value in (None, ""):
            if b.required:
                problems.append(f"{where}: model_config.yaml has no '{b.config_key}' ({comp} needs its {b.role})")
            return None
        name = strip_nemo(str(value))
        if name not in artifacts:
            problems.append(f"{where}: model_config.yaml '{b.config_key}' names artifact '{name}', which is not in "
                            "the archive")
            return None
        return name
    assert b.pattern is not None
    names = _match(artifacts, b.pattern)
    if len(names) == 1:
        return names[0]
    if not names:
        if b.required:
            problems.append(f"{where}: no artifact matches '{b.pattern}' ({comp} needs its {b.role})")
        return None
    problems.append(f"{where}: several artifacts match '{b.pattern}' for {comp}.{b.role}: {', '.join(names)}")
    return None


class _GraphChecks:
    """What svc-build checks of a scanned ONNX graph: external data only where it travels with the graph (in a
    ``.onnx.tar``), and a network's graph against its pipeline's family."""

    def __init__(self, pipeline: Pipeline, binds: dict[str, dict[str, tuple[str, str]]]) -> None:
        self.pipeline = pipeline
        self.family = FAMILIES.get(pipeline.family)
        self.networks = {roles["graph"]: comp for comp, roles in binds.items()
                         if pipeline.component(comp).kind == "network" and "graph" in roles}

    def check(self, item: _Input, name: str, scan: onnx_scan.GraphScan) -> None:
        assert item.slot is not None
        if self.family is not None and (item.slot.name, name) in self.networks:
            self.family.check_scanned_graph(self.pipeline, scan, self.networks[(item.slot.name, name)])


class _FormatKeep(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _sanitize(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-") or "model"


def build(opts: BuildOptions, reporter: Reporter | None = None) -> BuildResult:
    """Run svc-build. Raises a :class:`ServiceMakerError` on any bad input; never leaves a partial output."""
    rep = reporter or SilentReporter()
    started = time.perf_counter()
    pipeline = get_pipeline(opts.pipeline)
    overrides = check_overrides(pipeline, opts.overrides)
    _check_name(opts.name, "--name")
    _check_name(opts.domain_name, "--domain_name")
    _check_name(opts.language_code, "--language_code")
    if opts.max_batch_size is not None and not 1 <= opts.max_batch_size <= 4096:
        raise UsageError(f"--max_batch_size={opts.max_batch_size}: must be between 1 and 4096")
    out = opts.output.path
    if out.exists() and not opts.force:
        raise OutputExistsError(f"{out} exists", hint="pass -f to overwrite it")
    if not opts.inputs:
        raise UsageError("no input model given", hint=f"svc-build {pipeline.name} OUT.rmir MODEL.riva[:KEY]")
    slots_wanted = len(pipeline.inputs)
    if len(opts.inputs) != slots_wanted:
        classes = " + ".join("/".join(s.model_classes) for s in pipeline.inputs)
        usage = " ".join(f"{s.name.upper()}.riva" for s in pipeline.inputs)
        raise UsageError(f"pipeline {pipeline.name} takes {slots_wanted} input model(s) ({classes}); "
                         f"{len(opts.inputs)} given", hint=f"svc-build {pipeline.name} OUT.rmir {usage}")
    for arg in opts.inputs:
        if not arg.path.exists():
            raise NotFoundError(f"input {arg.shown} does not exist")
        if out.exists() and arg.path.resolve() == out.resolve():
            raise UsageError(f"the output {out} is also an input")

    with ExitStack() as stack:
        # -- open and classify ----------------------------------------------------------------------------------------
        inputs: list[_Input] = []
        for arg in opts.inputs:
            rep.step(f"Reading {arg.shown}")
            ring = KeyRing(key=arg.key or fallback_key(), salts=opts.salts)
            reader = stack.enter_context(EffReader(arg.path, ring=ring, limits=opts.limits))
            inputs.append(_Input(arg=arg, reader=reader, model_class=class_name(reader.metadata.get("obj_cls", ""))))
        problems = [f"{i.arg.shown}: manifest metadata has no obj_cls (the model class)"
                    for i in inputs if not i.reader.metadata.get("obj_cls")]
        if problems:
            raise ValidationError("cannot tell the model class of the input", problems)
        problems = _assign_slots(pipeline, inputs)
        if problems:
            raise ValidationError(f"the inputs do not fit pipeline {pipeline.name}", problems)

        # -- schemas, configs, bindings, parameters ---------------------------------------------------------------------
        schemas = load_schemas()
        for item in inputs:
            rep.step(f"Validating {item.arg.shown} as {item.model_class}")
            cache: dict[str, Any] = {}

            def read_yaml(name: str, _item: _Input = item, _cache: dict = cache) -> Any:
                if name not in _cache:
                    _cache[name] = yamlio.load(_item.reader.read_bytes(name))
                return _cache[name]

            problems += [f"{item.arg.shown}: {v}" for v in
                         schemas[item.model_class].check(item.reader.metadata, item.reader.artifacts, read_yaml)]
            if "model_config.yaml" in item.reader.artifacts:
                try:
                    item.config = read_yaml("model_config.yaml")
                except yamlio.YamlError:
                    item.config = None  # reported by the schema check
        by_slot = {i.slot.name: i for i in inputs if i.slot}
        binds, bind_problems = _resolve_binds(pipeline, by_slot)
        problems += bind_problems
        params, param_problems, option_files = _resolve_params(pipeline, by_slot, opts, overrides)
        problems += param_problems
        family = FAMILIES.get(pipeline.family)
        if not problems and family is not None:
            problems += family.check_configs(pipeline, {slot: i.config for slot, i in by_slot.items()}, params)
        if problems:
            raise ValidationError(f"the inputs do not satisfy pipeline {pipeline.name}", problems,
                                  hint="fix the export (or its model_config.yaml) and run svc-build again")
        graphs = _GraphChecks(pipeline, binds)
        for item in inputs:
            for name in item.reader.artifacts:
                if name.endswith(onnx_tar.SUFFIX):
                    rep.step(f"Checking {name}")
                    graphs.check(item, name, onnx_scan.scan_onnx_tar(item.reader.open(name),
                                                                     f"{item.arg.shown}: {name}", opts.limits))

        # -- names ------------------------------------------------------------------------------------------------------
        primary_cfg = by_slot[pipeline.inputs[0].name].config
        fmt = _FormatKeep(
            domain_name=opts.domain_name or pipeline.default_domain_name or "default",
            language_code=opts.language_code or pipeline.default_language_code,
            pretrained_model_name=_sanitize(str(config_value(primary_cfg, "language_model.pretrained_model_name")
                                                or "model")),
        )
        for part, key in pipeline.name_params.items():
            comp, _, param = key.partition(".")
            value = str(params[comp][param])
            _check_name(value, f"--{key}")
            fmt[part] = value
        ensemble_name = opts.name or pipeline.ensemble_name.format_map(fmt)
        fmt["name"] = ensemble_name

        # -- owners of artifacts --------------------------------------------------------------------------------------
        owner: dict[tuple[str, str], str] = {}
        for comp_name, roles in binds.items():
            for slot, name in roles.values():
                owner.setdefault((slot, name), comp_name)
        for item in inputs:
            for name in item.reader.artifacts:
                owner.setdefault((item.slot.name, name), item.slot.primary)
        stored_names: dict[tuple[str, str], str] = {}
        for (slot, name), comp in owner.items():
            stored = f"{comp}-{name}"
            if stored in stored_names.values():
                raise ValidationError(f"two artifacts would be stored as '{stored}'",
                                      hint="the inputs share an artifact name within one component")
            stored_names[(slot, name)] = stored

        # -- write ------------------------------------------------------------------------------------------------------
        input_specs = []
        for item in inputs:
            rep.step(f"Hashing {item.arg.shown}")
            digest, size = sha256_file(item.arg.path)
            meta = {k: item.reader.metadata[k] for k in _INPUT_METADATA if k in item.reader.metadata}
            odd = not_plain(meta)
            if odd is not None:
                raise ValidationError(f"{item.arg.shown}: metadata {odd} is not text or a number",
                                      hint="re-export the model; its manifest.yaml was altered")
            input_specs.append(InputSpec(slot=item.slot.name, file=item.arg.path.name, sha256=digest, size=size,
                                         model_class=item.model_class, obj_cls=str(item.reader.metadata["obj_cls"]),
                                         metadata=meta))
        writer = stack.enter_context(EffWriter(out, key=opts.output.key, force=opts.force,
                                               compresslevel=opts.compresslevel))
        refs: dict[tuple[str, str], ArtifactRef] = {}
        total = 0
        for item in inputs:
            for name, props in item.reader.artifacts.items():
                stored = stored_names[(item.slot.name, name)]
                comp = owner[(item.slot.name, name)]
                stream = item.reader.open(name)
                carried = {k: v for k, v in props.items() if k not in _CODEC_PROPS}
                carried.update(component=comp, source=name)
                source = rep.track(stream, f"{item.arg.path.name}: {name}", stream.size)
                if name.endswith(".onnx"):
                    source = onnx_scan.ScanningReader(source, onnx_scan.GraphScanner(f"{item.arg.shown}: {name}",
                                                                                     stream.size))
                final = writer.add_stream(stored, source, stream.size, carried)
                if isinstance(source, onnx_scan.ScanningReader):
                    scan = source.scanner.finish()
                    scan.check_external(None)   # a plain .onnx carries no data files
                    graphs.check(item, name, scan)
                refs[(item.slot.name, name)] = ArtifactRef(name=stored, source=name, input=item.slot.name,
                                                           sha256=digest_of(final), size=stream.size)
                total += stream.size
        for (comp, pname), path in option_files.items():
            stored = f"{comp}-{pname}-{path.name}"
            final = writer.add_file(stored, path, {"component": comp, "source": path.name, "option": f"{comp}.{pname}"})
            refs[("option", f"{comp}.{pname}")] = ArtifactRef(name=stored, source=path.name, input="option",
                                                               sha256=digest_of(final), size=final["size"])
            params[comp][pname] = stored
            total += final["size"]

        components = {}
        for comp in pipeline.components:
            arts = {role: refs[(slot, name)] for role, (slot, name) in binds[comp.name].items()}
            for pname in params[comp.name]:
                if (comp.name, pname) in option_files:
                    arts[pname] = refs[("option", f"{comp.name}.{pname}")]
            arts.update({f"extra:{ref.source}": ref for (slot, name), ref in refs.items()
                         if slot != "option" and owner.get((slot, name)) == comp.name and ref not in arts.values()})
            components[comp.name] = ComponentSpec(kind=comp.kind, model_name=comp.model_name.format_map(fmt),
                                                  params=params[comp.name], artifacts=arts)
        spec = PipelineSpec(
            spec_version=SPEC_VERSION, pipeline=pipeline.name, name=ensemble_name,
            domain_name=opts.domain_name or pipeline.default_domain_name, language_code=fmt["language_code"],
            components=components, ensemble=pipeline.ensemble, ensembles=dict(pipeline.extra_ensembles),
            inputs=input_specs, provenance=Provenance(tool="servicemaker", version=__version__),
        )
        metadata = {
            "format_version": 3,
            "obj_cls": "servicemaker.rmir.RMIR",
            "description": f"servicemaker RMIR: {pipeline.name} pipeline '{ensemble_name}'",
            "runtime": "Triton",
            SPEC_KEY: spec.to_metadata(),
        }
        rep.step(f"Writing {out}")
        writer.commit(metadata)
    return BuildResult(path=out, spec=spec, seconds=time.perf_counter() - started, artifact_bytes=total)


def _resolve_params(pipeline: Pipeline, by_slot: dict[str, _Input], opts: BuildOptions,
                    overrides: dict[tuple[str, str], Any]):
    """Every parameter's value: override > global option > model config > default."""
    problems: list[str] = []
    params: dict[str, dict[str, Any]] = {}
    files: dict[tuple[str, str], Path] = {}
    globals_ = {"max_batch_size": opts.max_batch_size}
    for comp in pipeline.components:
        slot = next((b.input for b in comp.binds), pipeline.inputs[0].name)
        item = by_slot[slot]
        values: dict[str, Any] = {}
        for p in comp.params:
            value = p.default
            if p.from_config is not None:
                raw = config_value(item.config, p.from_config)
                if raw is not None:
                    try:
                        value = p.coerce(raw, f"{item.arg.shown}: model_config.yaml {p.from_config}")
                    except UsageError as err:
                        problems.append(str(err))
            if p.from_global is not None and globals_.get(p.from_global) is not None:
                value = globals_[p.from_global]
            if (comp.name, p.name) in overrides:
                value = overrides[(comp.name, p.name)]
            if p.type == "file" and value is not None:
                path = Path(value)
                if not path.is_file():
                    raise NotFoundError(f"--{comp.name}.{p.name}: file {value} does not exist")
                if path.stat().st_size > MAX_OPTION_FILE_BYTES:
                    raise UsageError(f"--{comp.name}.{p.name}: {value} is larger than {MAX_OPTION_FILE_BYTES} bytes")
                files[(comp.name, p.name)] = path
            values[p.name] = value
        params[comp.name] = values
    return params, problems, files


__all__ = ["BuildOptions", "BuildResult", "build"]
