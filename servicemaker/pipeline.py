"""What a pipeline declares: inputs (model classes), components with typed parameters and artifact bindings,
Triton model names, and the ensemble graph svc-deploy builds. Pipelines are data; see ``pipelines/``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from servicemaker.errors import UsageError
from servicemaker.schema import dotted_get, is_missing

ParamType = Literal["int", "float", "bool", "str", "choice", "file"]
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Param(_Frozen):
    """A typed component parameter, set with ``--<component>.<name>=value``.

    ``from_config`` names a dotted key of the model's ``model_config.yaml`` whose value, when present, replaces
    ``default``; ``from_global`` names a svc-build option (``max_batch_size``) that does. ``file`` parameters name
    a file that svc-build bundles into the RMIR.
    """

    name: str
    type: ParamType
    help: str
    default: Any = None
    choices: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    from_config: str | None = None
    from_global: str | None = None

    def coerce(self, raw: Any, flag: str) -> Any:
        """Turn a command-line string (or a config value) into this parameter's type, or raise UsageError."""
        text = str(raw).strip()
        if self.type == "bool":
            if isinstance(raw, bool):
                return raw
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise UsageError(f"{flag}={raw}: expected true or false")
        if self.type == "int":
            try:
                value: Any = int(text, 10) if not isinstance(raw, (int, float)) or isinstance(raw, bool) else raw
                if isinstance(value, float):
                    if not value.is_integer():
                        raise ValueError
                    value = int(value)
                if isinstance(value, bool):
                    raise ValueError
            except ValueError:
                raise UsageError(f"{flag}={raw}: expected an integer") from None
            return self._bounded(value, flag)
        if self.type == "float":
            try:
                value = float(text)
            except ValueError:
                raise UsageError(f"{flag}={raw}: expected a number") from None
            if not math.isfinite(value):
                raise UsageError(f"{flag}={raw}: expected a finite number")
            return self._bounded(value, flag)
        if self.type == "choice":
            assert self.choices
            if text not in self.choices:
                raise UsageError(f"{flag}={raw}: expected one of {', '.join(self.choices)}")
            return text
        if not text and self.type == "file":
            raise UsageError(f"{flag}: expected a file name")
        return text

    def _bounded(self, value: Any, flag: str) -> Any:
        if self.min is not None and value < self.min:
            raise UsageError(f"{flag}={value}: must be at least {_num(self.min)}")
        if self.max is not None and value > self.max:
            raise UsageError(f"{flag}={value}: must be at most {_num(self.max)}")
        return value

    def describe(self) -> str:
        kind = "|".join(self.choices) if self.type == "choice" else self.type
        return f"{self.name} ({kind}, default {self.default!r}): {self.help}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


class Bind(_Frozen):
    """An artifact a component needs: named by a model-config key (``nemo:<name>``) or by a file pattern."""

    role: str
    input: str = "model"
    config_key: str | None = None
    pattern: str | None = None
    required: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> Bind:
        if (self.config_key is None) == (self.pattern is None):
            raise ValueError(f"bind {self.role}: give exactly one of config_key and pattern")
        return self


ComponentKind = Literal["python", "network"]


class Component(_Frozen):
    name: str
    kind: ComponentKind
    help: str
    params: tuple[Param, ...] = ()
    binds: tuple[Bind, ...] = ()
    #: for python components (and the network on the onnxruntime-python target): the handler in
    #: ``servicemaker/runtime/handlers.py`` that svc-deploy wires into the Triton model
    handler: str | None = None
    #: Triton model name; ``{domain_name}``, ``{language_code}``, ``{pretrained_model_name}`` and (for the network,
    #: filled at deploy) ``{runtime}`` are replaced.
    model_name: str


class InputSlot(_Frozen):
    """One model export the pipeline takes, the classes accepted, and the component its other artifacts go to."""

    name: str
    model_classes: tuple[str, ...]
    primary: str


class Tensor(_Frozen):
    name: str
    dtype: Literal["STRING", "FP32", "FP16", "INT32", "INT64", "BOOL", "UINT8"]
    dims: tuple[int, ...]
    #: a client may leave this ensemble input out (Triton's ``optional: true``)
    optional: bool = False


class Step(_Frozen):
    component: str
    inputs: dict[str, str]   # component input → ensemble tensor
    outputs: dict[str, str]  # component output → ensemble tensor


class Ensemble(_Frozen):
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    steps: tuple[Step, ...]

    def problems(self, components: set[str]) -> list[str]:
        """Graph defects: unknown components, tensors used before produced, outputs never produced."""
        out: list[str] = []
        available = {t.name for t in self.inputs}
        for step in self.steps:
            if step.component not in components:
                out.append(f"step uses unknown component '{step.component}'")
            for src in step.inputs.values():
                if src not in available:
                    out.append(f"step {step.component} reads '{src}' before any step produces it")
            for dst in step.outputs.values():
                if dst in available:
                    out.append(f"step {step.component} produces '{dst}', which already exists")
                available.add(dst)
        for t in self.outputs:
            if t.name not in available:
                out.append(f"ensemble output '{t.name}' is never produced")
        return out


class Pipeline(_Frozen):
    name: str
    help: str
    #: the family (``pipelines/__init__.py`` FAMILIES) whose deploy hooks and runtime handlers serve it
    family: Literal["nlp", "asr", "tts"]
    inputs: tuple[InputSlot, ...]
    components: tuple[Component, ...]
    ensemble: Ensemble
    ensemble_name: str
    default_domain_name: str | None = None
    default_language_code: str = "en-US"
    #: Riva's flag names for component parameters: ``--chunk_size`` means ``--featurizer.chunk_size`` here
    aliases: dict[str, str] = {}
    #: switches (flags without a value) that select another registered pipeline: ``--offline`` →
    #: ``speech_recognition_offline``
    variants: dict[str, str] = {}
    #: further ensembles svc-deploy writes beside ``ensemble``, by the suffix of their model name (speech
    #: synthesis: ``-streaming``, the same pipeline answering with a stream of audio chunks)
    extra_ensembles: dict[str, Ensemble] = {}
    #: name parts model names may use (``{voice_name}``) → the ``component.param`` holding their value
    name_params: dict[str, str] = {}
    #: the inputs must come in the order of ``inputs`` (Riva's: FastPitch, then HiFi-GAN)
    ordered_inputs: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> Pipeline:
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError(f"pipeline {self.name}: duplicate component names")
        slots = {s.name for s in self.inputs}
        for c in self.components:
            for b in c.binds:
                if b.input not in slots:
                    raise ValueError(f"pipeline {self.name}: {c.name} binds from unknown input '{b.input}'")
        for part, key in self.name_params.items():
            comp, _, param = key.partition(".")
            if comp not in names or param not in {p.name for p in self.component(comp).params}:
                raise ValueError(f"pipeline {self.name}: name part {part} names unknown parameter {key}")
        for suffix, ensemble in {"": self.ensemble, **self.extra_ensembles}.items():
            if suffix and not re.fullmatch(r"-[A-Za-z0-9_.-]+", suffix):
                raise ValueError(f"pipeline {self.name}: ensemble suffix {suffix!r} must start with '-'")
            problems = ensemble.problems(set(names))
            if problems:
                raise ValueError(f"pipeline {self.name}{suffix}: " + "; ".join(problems))
        return self

    def component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    def param_names(self) -> list[str]:
        return [f"{c.name}.{p.name}" for c in self.components for p in c.params]

    def accepted_classes(self) -> list[str]:
        return [cls for s in self.inputs for cls in s.model_classes]


# --- shared parameter sets -------------------------------------------------------------------------------------------

def serving_params(*, queue_delay_us: int = 1000, max_batch_size: int = 8) -> tuple[Param, ...]:
    """Parameters every Triton model component has."""
    return (
        Param(name="max_batch_size", type="int", min=1, max=4096, default=max_batch_size, from_global="max_batch_size",
              help="largest batch Triton sends to this model"),
        Param(name="instance_group_count", type="int", min=1, max=64, default=1,
              help="model instances Triton runs"),
        Param(name="max_queue_delay_microseconds", type="int", min=0, max=10_000_000, default=queue_delay_us,
              help="how long the dynamic batcher waits to fill a batch"),
    )


def network_params(*, precision: str = "fp16", calibration_method: str = "percentile",
                   max_batch_size: int = 8) -> tuple[Param, ...]:
    """Parameters of a network (``nn``) component: the optimizing compiler's options."""
    return serving_params(queue_delay_us=100, max_batch_size=max_batch_size) + (
        Param(name="precision", type="choice", choices=("fp32", "fp16", "int8"), default=precision,
              help="compute precision of the optimized network"),
        Param(name="fuse", type="bool", default=True, help="fuse GELU/LayerNorm/attention patterns"),
        Param(name="fusion_ops", type="choice", choices=("auto", "onnx", "trt_plugin", "ort_contrib", "ort"),
              default="auto",
              help="what fused patterns become: auto (onnx for TensorRT, ort for the CPU targets), onnx (standard "
                   "ops), trt_plugin (TensorRT < 10 plugins), ort_contrib (ONNX Runtime contrib ops), ort (standard "
                   "ops plus ONNX Runtime's MultiHeadAttention)"),
        Param(name="sparsity", type="choice", choices=("none", "2:4"), default="none",
              help="2:4 structured sparsity of suitable weights"),
        Param(name="calibration_data", type="file", default=None,
              help="INT8 calibration examples, one per line (bundled into the RMIR)"),
        Param(name="calibration_method", type="choice", choices=("minmax", "entropy", "percentile", "auto"),
              default=calibration_method,
              help="INT8 calibration method; auto: each of the three, keeping the one that scores best on the "
                   "accuracy gate's sentences (top-1 on their labels where nn.gate_data has them, else cosine)"),
        Param(name="gate_data", type="file", default=None,
              help="the accuracy gate's held-out examples, one per line, optionally 'label<TAB>text' (bundled into "
                   "the RMIR); default: servicemaker's 48 English sentences"),
        Param(name="accuracy_tolerance", type="float", min=0.0, max=1.0, default=0.01,
              help="largest accepted drop (1 - cosine similarity) of the optimized network"),
        Param(name="max_workspace_size", type="int", min=16, max=1 << 20, default=4096,
              help="TensorRT builder workspace limit in MiB"),
    )


def tokenizer_params(*, max_seq_length: int = 128) -> tuple[Param, ...]:
    return serving_params() + (
        Param(name="max_seq_length", type="int", min=8, max=8192, default=max_seq_length,
              from_config="dataset.max_seq_length", help="tokens per sequence, special tokens included"),
        Param(name="lower_case", type="bool", default=True, from_config="tokenizer.do_lower_case",
              help="lower-case text before WordPiece (uncased vocabularies)"),
    )


def parse_overrides(args: list[str], flat: Iterable[str] = (), switches: Iterable[str] = ()
                    ) -> tuple[dict[str, str], list[str]]:
    """Split ``--comp.param=value`` / ``--comp.param value`` tokens from positional ones.

    ``flat`` names undotted flags that are parameters too (a pipeline's Riva aliases); ``switches`` name flags
    that take no value (recorded as ``"true"``, or the value after ``=``).
    """
    flat, switches = set(flat), set(switches)
    overrides: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        tok = args[i]
        name = tok[2:].split("=", 1)[0]
        if tok.startswith("--") and ("." in name or name in flat or name in switches):
            key, sep, value = tok[2:].partition("=")
            if not sep and key in switches:
                value = "true"
            elif not sep:
                if i + 1 >= len(args):
                    raise UsageError(f"--{key} needs a value", hint=f"write --{key}=VALUE")
                value = args[i + 1]
                i += 1
            if key in overrides:
                raise UsageError(f"--{key} is given twice")
            overrides[key] = value
        elif tok.startswith("-") and tok != "-":
            hint = ("this pipeline's flags: " + ", ".join(f"--{n}" for n in sorted(flat | switches))
                    if flat or switches else "see --help")
            raise UsageError(f"unknown option {tok}", hint=hint)
        else:
            rest.append(tok)
        i += 1
    return overrides, rest


def resolve_aliases(pipeline: Pipeline, overrides: dict[str, str]) -> dict[str, str]:
    """Riva's flag names → ``component.param`` keys; two flags naming one parameter is an error."""
    out: dict[str, str] = {}
    for key, value in overrides.items():
        target = pipeline.aliases.get(key, key)
        if target in out:
            raise UsageError(f"--{key} sets {target}, which another flag already sets")
        out[target] = value
    return out


def check_overrides(pipeline: Pipeline, overrides: dict[str, str]) -> dict[tuple[str, str], Any]:
    """Type-check overrides against the pipeline; every problem is reported in one error."""
    valid = {f"{c.name}.{p.name}": (c, p) for c in pipeline.components for p in c.params}
    problems: list[str] = []
    out: dict[tuple[str, str], Any] = {}
    for key, raw in resolve_aliases(pipeline, overrides).items():
        if key not in valid:
            problems.append(f"--{key} is not a parameter of pipeline {pipeline.name}")
            continue
        comp, param = valid[key]
        try:
            out[(comp.name, param.name)] = param.coerce(raw, f"--{key}")
        except UsageError as err:
            problems.append(str(err))
    if problems:
        unknown = any("is not a parameter" in p for p in problems)
        hint = ("valid parameters: " + ", ".join([f"--{n}" for n in valid] + [f"--{n}" for n in pipeline.aliases])
                ) if unknown else None
        raise UsageError("; ".join(problems), hint=hint)
    return out


def config_value(config: Any, dotted: str) -> Any:
    value = dotted_get(config, dotted)
    return None if is_missing(value) else value
