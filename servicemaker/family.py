"""Pipeline families (NLP, ASR, ...): what svc-deploy's domain-agnostic steps ask of a domain.

Each family (``pipelines/_nlp.py``, ``pipelines/_asr.py``, ``pipelines/_tts.py``) subclasses :class:`Family` and
the registry in ``pipelines/__init__.py`` maps its name to it; a :class:`~servicemaker.pipeline.Pipeline` names its
family. The deploy steps call these hooks with a :class:`NetworkJob` — one per network component of an RMIR (NLP and
ASR pipelines have one, ``nn``; speech synthesis two, ``spectrogram_generator`` and ``vocoder``: ``job.component``
tells them apart) — and never look at tokenizers, audio or labels themselves:

- ``check_graph``: read the exported graph, check it fits the pipeline, return the signature Triton will see;
- ``check_scanned_graph``: svc-build's early form of ``check_graph``: the same rules, applied to what a scan of
  the graph reads without loading its weights (:mod:`servicemaker.onnx_scan`: inputs, outputs, ...);
- ``check_configs``: svc-build's check of the inputs' model configs against each other and the parameters (what
  needs no graph, e.g. a speech-synthesis tokenizer servicemaker reproduces, sample rates that agree);
- ``saved_state`` / ``restore_state``: what ``check_graph`` left in ``job.state`` that later steps read, as JSON
  kept in the compile cache's entry, and back: a deploy that finds its network compiled neither extracts nor loads
  the graph (``check_graph`` ran when the entry was made, on the same artifacts);
- ``network_graph``: the graph the network model runs (e.g. ASR fuses its featurizer in front; TTS masks FastPitch's
  padding leak); entries it leaves in ``job.state["report"]`` join the network's optimization report;
- ``sample_feeds``: calibration and accuracy-gate inputs for the optimizing compiler;
- ``int8_exclude``: node-name prefixes INT8 leaves in FP32 (e.g. ASR's fused featurizer);
- ``gate``: the family's own accuracy figures of an optimized network against FP32 (e.g. ASR's character error rate
  of the transcripts), one of which may be what ``nn.accuracy_tolerance`` bounds;
- ``engine_profile``: TensorRT optimization profile;
- ``network_batched``: whether Triton batches the network's requests (a graph without a batch axis, such as
  FastPitch's ragged export, is served with ``max_batch_size: 0``);
- ``model_params``: extra config.pbtxt parameters of a Python-backend component (e.g. the network's name);
- ``runtime``: the module of ``servicemaker/runtime`` whose handlers the family's Python models run, and
  ``runtime_support`` the modules of that folder it imports (copied beside it as ``svc_<name>.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # types of other modules; families import them lazily
    from servicemaker.onnx_scan import GraphScan, Signature
    from servicemaker.pipeline import Pipeline
    from servicemaker.spec import PipelineSpec

Feeds = dict[str, Any]


@dataclass
class NetworkJob:
    """One network of an RMIR as the deploy steps see it; ``state`` is the family's own scratch space."""

    where: str                          # "<rmir>: graph <source>", for messages
    spec: PipelineSpec
    pipeline: Pipeline
    graph_path: Path | None             # None on a compile cache hit: the graph is not extracted
    target: str
    params: dict[str, Any]              # the network component's parameters, svc-deploy's overrides applied
    files: dict[str, dict[str, Path]]   # python component → {artifact role: staged file}
    model_names: dict[str, str]         # component → Triton model name
    calibration_path: Path | None = None
    gate_path: Path | None = None       # the RMIR's nn.gate_data, staged
    signature: Signature | None = None
    state: dict[str, Any] = field(default_factory=dict)
    component: str = "nn"               # the network component this job compiles

    def component_params(self, component: str) -> dict[str, Any]:
        return dict(self.spec.components[component].params)


def network_models(networks: dict[str, tuple[str, tuple[str, ...], bool]]) -> str:
    """The ``network_models`` parameter of a Python-backend model that runs other models of the repository (business
    logic scripting): role → (Triton model name, output names, batched), as the glue in ``templates/python/model.py``
    reads it (a batched model takes ``[batch]`` tensors as ``[batch, 1]``)."""
    import json

    return json.dumps({role: {"model": name, "outputs": list(outputs), "batched": batched}
                       for role, (name, outputs, batched) in networks.items()}, sort_keys=True)


def refuse(where: str, pipeline: str, problems: list[str], hint: str) -> None:
    """Raise the ValidationError of a graph (``where``) that does not fit ``pipeline``, naming every problem."""
    if problems:
        from servicemaker.errors import ValidationError

        raise ValidationError(f"{where} does not fit pipeline {pipeline}", problems, hint=hint)


@dataclass
class SampleFeeds:
    calibration: list[Feeds]
    gate: list[Feeds]
    source: str                         # where the calibration data came from, for the report


class Family:
    """Base hooks; a family overrides what its domain needs."""

    name = ""
    #: module under servicemaker.runtime holding this family's Triton handlers
    runtime = ""
    #: modules of servicemaker.runtime the handler module imports (copied beside it as ``svc_<name>.py``)
    runtime_support: tuple[str, ...] = ()
    #: handler name (``*``: any other) → requirement lines the Python backend needs for it (requirements.txt)
    requirements: dict[str, tuple[str, ...]] = {}

    def requirements_for(self, handler: str, params: dict[str, str] | None = None) -> tuple[str, ...]:
        """What a model running ``handler`` with config parameters ``params`` needs installed."""
        return self.requirements.get(handler, self.requirements.get("*", ()))

    def check_graph(self, job: NetworkJob, model: Any) -> Signature:
        raise NotImplementedError

    def check_scanned_graph(self, pipeline: Pipeline, graph: GraphScan, component: str) -> None:
        """At svc-build: raise a ValidationError naming every way the graph of network ``component``, scanned
        without loading it, does not fit ``pipeline`` — the rules of :meth:`check_graph` that need only the graph's
        interface (the rest, which need the weights or the staged files, wait for svc-deploy). Default: nothing to
        check."""

    def check_configs(self, pipeline: Pipeline, configs: dict[str, Any], params: dict[str, dict[str, Any]]
                      ) -> list[str]:
        """At svc-build: every way the inputs' ``model_config.yaml`` (by input slot; None where unreadable) and the
        resolved component parameters do not fit each other. Default: nothing to check."""
        return []

    def saved_state(self, job: NetworkJob) -> dict[str, Any]:
        """After :meth:`check_graph`: the parts of ``job.state`` the steps after it read (``model_params``,
        ``network_handler``, ...), as a JSON-able dict stored with the compiled network. Default: none."""
        return {}

    def restore_state(self, job: NetworkJob, saved: Any) -> dict[str, Any]:
        """The ``job.state`` entries :meth:`saved_state` gave (``saved``: its JSON, read back from a cache entry);
        ValueError naming the problem when ``saved`` is not such a document (the entry is then compiled again)."""
        if saved != {}:
            raise ValueError(f"unexpected network state {str(saved)[:80]!r}")
        return {}

    def network_graph(self, job: NetworkJob, folded: Any) -> Any:
        return folded

    def sample_feeds(self, job: NetworkJob) -> SampleFeeds:
        raise NotImplementedError

    def int8_exclude(self, job: NetworkJob) -> tuple[str, ...]:
        """Prefixes of the node names INT8 must leave in FP32 (``nn.precision=int8``)."""
        return ()

    def gate(self, job: NetworkJob, reference: list[dict[str, Any]], optimized: list[dict[str, Any]],
             feeds: list[Feeds]) -> dict[str, Any] | None:
        """Extra accuracy figures of the optimized network: ``reference`` and ``optimized`` are the FP32 and
        optimized graphs' outputs (``{output name: array}``) on each of ``feeds`` (the sample feeds' ``gate``).
        A ``"gated_by"`` key names the figure ``nn.accuracy_tolerance`` bounds instead of ``1 - cosine``: an error
        rate, 0 at best. None: the generic gate alone (cosine, top-1 agreement)."""
        return None

    def engine_profile(self, job: NetworkJob) -> dict[str, tuple[tuple[int, ...], ...]]:
        raise NotImplementedError

    def network_batched(self, job: NetworkJob) -> bool:
        """Whether the network's first axis is the batch Triton may assemble (``max_batch_size`` > 0)."""
        return True

    def model_params(self, jobs: dict[str, NetworkJob], component: str) -> dict[str, str]:
        """Extra parameters of Python-backend ``component``; ``jobs``: the RMIR's networks by component."""
        return {}

    def network_handler(self, job: NetworkJob) -> str:
        """The handler of the network model on the onnxruntime-python target."""
        return "onnx"
