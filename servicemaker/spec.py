"""The pipeline spec an RMIR carries in its manifest metadata (key ``pipeline_spec``), versioned.

It records everything svc-deploy needs without re-reading the inputs: the pipeline, Triton model names, every
parameter resolved, each component's bound artifacts (stored name, original name, sha256, size), the ensemble
graph, and provenance (tool version, input file names and sha256s). No timestamps or absolute paths: the same
inputs and options give the same spec, and so a byte-identical RMIR.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

from servicemaker.errors import SpecVersionError, ValidationError
from servicemaker.pipeline import Ensemble

SPEC_VERSION = 1
SPEC_KEY = "pipeline_spec"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArtifactRef(_Model):
    name: str          # stored name in the RMIR: <component>-<source>
    source: str        # name in the input archive (or the option's file name)
    input: str         # input slot, or "option" for files given with --<component>.<param>
    sha256: str        # the manifest's digest of the artifact: sha256, or hmac_sha256 in an encrypted RMIR
    size: int


class ComponentSpec(_Model):
    kind: Literal["python", "network"]
    model_name: str    # Triton model name; a network's holds "{runtime}", filled by svc-deploy
    params: dict[str, Any]
    artifacts: dict[str, ArtifactRef]


class InputSpec(_Model):
    slot: str
    file: str          # base name only
    sha256: str        # of the input file as given
    size: int
    model_class: str
    obj_cls: str
    metadata: dict[str, Any]


class Provenance(_Model):
    tool: str
    version: str


class PipelineSpec(_Model):
    spec_version: int
    pipeline: str
    name: str
    domain_name: str | None
    language_code: str
    components: dict[str, ComponentSpec]
    ensemble: Ensemble
    inputs: list[InputSpec]
    provenance: Provenance
    #: the pipeline's other ensembles by model-name suffix (speech synthesis: ``-streaming``); absent when none
    ensembles: dict[str, Ensemble] = {}

    def to_metadata(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        if not self.ensembles:
            del data["ensembles"]  # RMIRs of pipelines with one ensemble read the same as before it existed
        return data

    def entry_ensembles(self) -> dict[str, Ensemble]:
        """Every ensemble by its key in the deploy's plans (``ensemble``, ``ensemble-streaming``)."""
        return {"ensemble": self.ensemble, **{f"ensemble{suffix}": e for suffix, e in self.ensembles.items()}}


def not_plain(value: Any, path: str = "") -> str | None:
    """The dotted path of the first value in ``value`` that is not plain data (text, number, bool, null, lists and
    mappings with text keys): YAML can hold binary data, dates and sets, which a spec must not."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return None
    if isinstance(value, list):
        return next((p for i, v in enumerate(value) if (p := not_plain(v, f"{path}.{i}" if path else str(i)))), None)
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"{path}.{k!r}" if path else repr(k)
            if (p := not_plain(v, f"{path}.{k}" if path else k)) is not None:
                return p
        return None
    return f"{path} ({type(value).__name__})"


def read_spec(metadata: dict[str, Any], where: str) -> PipelineSpec:
    """The spec of an RMIR, refusing one from a newer servicemaker or a malformed one."""
    raw = metadata.get(SPEC_KEY)
    if not isinstance(raw, dict):
        raise ValidationError(f"{where} is not an RMIR (its manifest has no {SPEC_KEY})",
                              hint="build one with svc-build first")
    version = raw.get("spec_version")
    if not isinstance(version, int):
        raise ValidationError(f"{where}: pipeline spec has no integer spec_version")
    if version > SPEC_VERSION:
        raise SpecVersionError(f"{where}: pipeline spec version {version} is newer than this servicemaker reads "
                               f"({SPEC_VERSION})", hint="upgrade servicemaker, or rebuild the RMIR with this version")
    odd = not_plain(raw)
    if odd is not None:
        raise ValidationError(f"{where}: pipeline spec is malformed", [f"{odd}: not text, a number or a list/mapping"])
    try:
        return PipelineSpec.model_validate(raw)
    except PydanticValidationError as err:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        raise ValidationError(f"{where}: pipeline spec is malformed", problems) from None
