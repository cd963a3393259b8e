"""Triton model configurations: typed specs rendered through Jinja2 templates, then parsed as Triton's own
``ModelConfig`` protobuf before anything is written — a bad template fails the deploy, never the server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Sequence

from servicemaker import __version__
from servicemaker.errors import ServiceMakerError, ValidationError

#: Triton data types accepted in tensor declarations.
DATA_TYPES = {"TYPE_BOOL", "TYPE_UINT8", "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16",
              "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16"}
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


class TemplateError(ServiceMakerError):
    """A template rendered something that is not a valid Triton model configuration (a bug in the template)."""

    exit_code = 1


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str
    dims: tuple[int, ...]              # without the batch axis; () for a [batch] tensor (rendered [1], reshaped)
    ragged: bool = False               # allow_ragged_batch: requests of different lengths share a batch
    optional: bool = False             # a request may leave this input out

    def __post_init__(self) -> None:
        if self.data_type not in DATA_TYPES:
            raise ValueError(f"tensor {self.name}: unknown data type {self.data_type}")


@dataclass(frozen=True)
class EnsembleStep:
    model_name: str
    input_map: dict[str, str]   # model input → ensemble tensor
    output_map: dict[str, str]  # model output → ensemble tensor


@dataclass
class ModelConfigSpec:
    """Everything a config.pbtxt says; ``template`` picks the file under templates/config/."""

    name: str
    template: str                      # python | onnxruntime | tensorrt | ensemble
    max_batch_size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    comment: str
    instance_kind: str = "KIND_CPU"
    instance_count: int = 1
    queue_delay_us: int | None = None  # None: no dynamic batching
    preferred_batch_sizes: list[int] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)
    steps: list[EnsembleStep] = field(default_factory=list)
    #: Triton's sequence batcher (oldest strategy, START/READY/END/CORRID controls) instead of the dynamic one;
    #: the idle timeout in microseconds
    sequence_idle_us: int | None = None
    #: Triton's decoupled transaction policy: the model answers a request with any number of responses
    decoupled: bool = False

    def context(self) -> dict[str, Any]:
        return {"m": {**self.__dict__, "template": f"{self.template}.pbtxt.j2", "tool_version": __version__}}


def pbstr(value: Any) -> str:
    """A protobuf text-format string literal."""
    text = str(value)
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        elif ord(ch) > 0x7F:
            out.append("".join(f"\\{b:03o}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


@lru_cache(maxsize=1)
def _environment():
    import jinja2

    folder = resources.files("servicemaker.templates") / "config"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), undefined=jinja2.StrictUndefined,
                             autoescape=False, keep_trailing_newline=True, trim_blocks=False, lstrip_blocks=False)
    env.filters["pbstr"] = pbstr
    return env


def parse_config(text: str, where: str):
    """Parse config.pbtxt text as Triton's ModelConfig protobuf; TemplateError on any problem."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as err:
        raise TemplateError(f"{where}: rendered config.pbtxt is not a valid Triton ModelConfig: {err}",
                            hint="this is a bug in a template under templates/config/; report it") from None


def render(spec: ModelConfigSpec) -> tuple[str, Any]:
    """The config.pbtxt text for ``spec`` and its parsed ModelConfig, checked against ``spec``."""
    import jinja2

    if not _NAME.match(spec.name):
        raise ValidationError(f"model name '{spec.name}' is not usable as a Triton model folder",
                              hint="use letters, digits, '_', '-' and '.' only (see --name, --domain_name)")
    try:
        text = _environment().get_template(f"{spec.template}.pbtxt.j2").render(spec.context())
    except jinja2.TemplateError as err:
        raise TemplateError(f"template {spec.template}.pbtxt.j2 failed for {spec.name}: {err}",
                            hint="this is a bug in a template under templates/config/; report it") from None
    text = re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
    parsed = parse_config(text, spec.name)
    problems = _mismatches(spec, parsed)
    if problems:
        raise TemplateError(f"template {spec.template}.pbtxt.j2 lost information for {spec.name}: "
                            + "; ".join(problems), hint="this is a bug in a template; report it")
    return text, parsed


def _mismatches(spec: ModelConfigSpec, parsed: Any) -> list[str]:
    from tritonclient.grpc import model_config_pb2 as pb

    out = []
    if parsed.name != spec.name:
        out.append("name")
    if parsed.max_batch_size != spec.max_batch_size:
        out.append("max_batch_size")
    for kind, want, got in (("input", spec.inputs, parsed.input), ("output", spec.outputs, parsed.output)):
        have = [(t.name, pb.DataType.Name(t.data_type), tuple(t.dims), getattr(t, "optional", False)) for t in got]
        if have != [(t.name, t.data_type, tuple(t.dims) or (1,), t.optional) for t in want]:
            out.append(f"{kind} tensors")
    if parsed.model_transaction_policy.decoupled != spec.decoupled:
        out.append("transaction policy")
    if {k: v.string_value for k, v in parsed.parameters.items()} != spec.parameters:
        out.append("parameters")
    return out


def check_ensemble(ensemble: Any, members: dict[str, Any]) -> list[str]:
    """What Triton would refuse at load time: unknown models, unknown tensors, type or shape clashes."""
    problems: list[str] = []
    produced: dict[str, tuple[int, tuple[int, ...]]] = {t.name: (t.data_type, tuple(t.dims)) for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = members.get(step.model_name)
        if model is None:
            problems.append(f"step model {step.model_name} is not part of this deploy")
            continue
        if 0 < model.max_batch_size < ensemble.max_batch_size:
            problems.append(f"{step.model_name}: max_batch_size {model.max_batch_size} is below the ensemble's "
                            f"{ensemble.max_batch_size}")
        ins = {t.name: t for t in model.input}
        outs = {t.name: t for t in model.output}
        for key, src in step.input_map.items():
            if key not in ins:
                problems.append(f"{step.model_name} has no input {key}")
            elif src not in produced:
                problems.append(f"{step.model_name}.{key} reads {src} before it is produced")
            elif produced[src][0] != ins[key].data_type or not dims_compatible(produced[src][1], tuple(ins[key].dims)):
                problems.append(f"{step.model_name}.{key}: {src} has another type or shape")
        for key in ins:
            if key not in step.input_map:
                problems.append(f"{step.model_name}: input {key} is not fed")
        for key, dst in step.output_map.items():
            if key not in outs:
                problems.append(f"{step.model_name} has no output {key}")
            else:
                produced[dst] = (outs[key].data_type, tuple(outs[key].dims))
    for t in ensemble.output:
        if t.name not in produced:
            problems.append(f"ensemble output {t.name} is never produced")
        elif produced[t.name][0] != t.data_type or not dims_compatible(produced[t.name][1], tuple(t.dims)):
            problems.append(f"ensemble output {t.name} has another type or shape than its producer")
    return problems


def dims_compatible(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b))
