"""What svc-deploy's steps share: the options, the plan of every model folder and RMIR, the step results, and the
state object the steps receive."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servicemaker.build import Reporter
from servicemaker.deploy import graph as graphs
from servicemaker.deploy.config import ModelConfigSpec
from servicemaker.deploy.staging import MODELS, Staging
from servicemaker.eff.codecs import SaltTable
from servicemaker.eff.limits import DEFAULT_LIMITS, Limits
from servicemaker.eff.reader import EffReader
from servicemaker.family import NetworkJob
from servicemaker.keys import ArchiveArg
from servicemaker.pipeline import Pipeline
from servicemaker.spec import PipelineSpec

#: the version folder of every model written
VERSION = "1"


@dataclass
class DeployOptions:
    rmirs: list[ArchiveArg]
    repo: Path
    force: bool = False
    target: str = "auto"
    salts: SaltTable | None = None
    limits: Limits = DEFAULT_LIMITS
    #: ``nn.<param>`` → value: compiler options overriding those the RMIRs recorded at svc-build
    overrides: dict[str, str] = field(default_factory=dict)
    allow_accuracy_drop: bool = False
    #: the compile cache's shared store (an fsspec URL: ``s3://bucket/prefix``, ``file://...``); None: local only
    cache: str | None = None
    #: False (``--no-cache``): neither read nor write any compile cache
    use_cache: bool = True
    #: the serving layout (:mod:`servicemaker.deploy.layout`): ``ensemble`` (one model per component) or ``fused``
    serving: str = "ensemble"


@dataclass
class StepResult:
    name: str
    status: str           # OK | SKIPPED | FAILED
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelPlan:
    """One Triton model folder to write."""

    name: str
    rmir: RmirPlan
    component: str                    # component name, or an ensemble key (``ensemble``, ``ensemble-streaming``)
    action: str = "write"             # write | replace | keep
    fingerprint: str = ""
    files: dict[str, Path] = field(default_factory=dict)   # version-folder file → staged source
    config: ModelConfigSpec | None = None
    config_text: str = ""
    parsed: Any = None
    report: dict[str, Any] = field(default_factory=dict)   # the network step's optimization report
    cache: dict[str, Any] = field(default_factory=dict)    # where the network came from (compile cache record)


@dataclass
class NetworkPlan:
    """One network component of an RMIR (NLP and ASR pipelines have one, ``nn``; speech synthesis two)."""

    component: str
    signature: graphs.Signature | None = None
    graph_path: Path | None = None
    #: the network's staged sample files by role: ``calibration_data``, ``gate_data``
    sample_paths: dict[str, Path] = field(default_factory=dict)
    job: NetworkJob | None = None
    #: the compile cache's answer for the network (``networks.Outcome``), once ``lookup_cache`` asked it
    outcome: Any = None

    @property
    def hit(self) -> bool:
        """The network comes from the compile cache: its graph is neither extracted nor loaded."""
        return self.outcome is not None and self.outcome.status == "hit"


#: the key of a pipeline's entry models in :attr:`RmirPlan.models`: ``ensemble``, and ``ensemble<suffix>`` for the
#: pipeline's other ensembles (``ensemble-streaming``)
ENSEMBLE = "ensemble"


def is_ensemble(key: str) -> bool:
    return key == ENSEMBLE or key.startswith(ENSEMBLE + "-")


@dataclass
class RmirPlan:
    arg: ArchiveArg
    reader: EffReader
    spec: PipelineSpec
    pipeline: Pipeline
    sha256: str
    size: int
    models: dict[str, ModelPlan] = field(default_factory=dict)   # component (or an ensemble key) → plan
    #: network component → its plan, in the pipeline's order
    networks: dict[str, NetworkPlan] = field(default_factory=dict)

    def members(self) -> dict[str, ModelPlan]:
        """The component models (the ensembles aside)."""
        return {c: m for c, m in self.models.items() if not is_ensemble(c)}


@dataclass
class DeployResult:
    repo: Path
    target: str
    written: list[str]
    replaced: list[str]
    kept: list[str]
    steps: list[StepResult]
    seconds: float
    #: network model name → where its compiled network came from: "hit" (a compile cache, local or shared),
    #: "miss" (compiled, then stored), "rebuilt" (a corrupt entry was dropped; compiled, then stored again),
    #: "off" (compiled, cache disabled)
    cache: dict[str, str] = field(default_factory=dict)


class _Deploy:
    """The state the steps share."""

    def __init__(self, opts: DeployOptions, reporter: Reporter, stack: ExitStack) -> None:
        self.opts = opts
        self.rep = reporter
        self.stack = stack
        self.target = opts.target
        self.instance_kind = "KIND_CPU"
        self.rmirs: list[RmirPlan] = []
        self.models: dict[str, ModelPlan] = {}
        self.staging: Staging | None = None
        self.results: list[StepResult] = []
        #: the compile cache (:class:`servicemaker.deploy.cache.CompileCache`), None with --no-cache
        self.cache: Any = None

    # -- helpers ----------------------------------------------------------------------------------------------------
    @property
    def stage(self) -> Path:
        """The staging folder: everything is written here before the commit."""
        assert self.staging is not None
        return self.staging.path

    def staged(self, plan: ModelPlan) -> Path:
        folder = self.stage / MODELS / plan.name / VERSION
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def work(self, rmir: RmirPlan) -> Path:
        folder = self.stage / "work" / rmir.sha256[:16]
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def live(self) -> list[ModelPlan]:
        """Models this deploy writes (kept ones excluded), each once."""
        return [m for m in self.models.values() if m.action != "keep"]
