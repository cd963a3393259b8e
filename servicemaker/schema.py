"""Per-model-class export schemas in nemo2riva's three-list format.

A schema (``schemas/*.yaml``) has up to three lists::

    metadata:                       # required manifest metadata
      - obj_cls: nemo.collections.nlp.models.TextClassificationModel
      - min_nemo_version: '1.1'     # compared as a version: the archive's must be >= this
    artifact_properties:            # (alias: file_properties) artifacts that must exist, with required props
      - model_config.yaml
      - model_graph.onnx:
          onnx: True
    artifact_content:               # (alias: file_content) YAML artifacts and the dotted keys they must hold
      - model_config.yaml:
        - language_model.pretrained_model_name      # the key must exist (its value may be null)
        - tokenizer.vocab_file: True                # ... and name an artifact of the archive (after 'nemo:')

Keys nemo2riva uses as export directives (``encryption``, ``encrypted``, ``autocast``, ``max_dim``,
``export_subnet``) are not checked. A required ``X.onnx`` is also satisfied by ``X.onnx.tar`` (graphs over 2 GB).
``obj_cls`` is compared by class name (the part after the last dot), as modules move between NeMo versions.
Every violation is reported, not only the first.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable

from packaging.version import InvalidVersion, Version

from servicemaker import yamlio
from servicemaker.errors import ServiceMakerError, ValidationError, shown

EXPORT_DIRECTIVES = frozenset({"encryption", "encrypted", "autocast", "max_dim", "export_subnet"})
NEMO_PREFIX = "nemo:"
_MISSING = object()


def class_name(obj_cls: Any) -> str:
    """``nemo.collections.nlp.models.X`` → ``X``."""
    return str(obj_cls).rsplit(".", 1)[-1]


def strip_nemo(value: str) -> str:
    return value[len(NEMO_PREFIX):] if value.startswith(NEMO_PREFIX) else value


def dotted_get(data: Any, dotted: str) -> Any:
    """Value at ``a.b.c`` in nested mappings, or ``_MISSING``."""
    cur = data
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def is_missing(value: Any) -> bool:
    return value is _MISSING


def _as_version(value: Any) -> Version | None:
    try:
        return Version(str(value).strip())
    except (InvalidVersion, ValueError):  # ValueError: more digits than int() converts
        return None


def _same(expected: Any, actual: Any) -> bool:
    """Equality that treats YAML's spellings of booleans and numbers alike (True == 'true', 1 == '1')."""
    def norm(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v).strip().lower()
    return norm(expected) == norm(actual)


def _pairs(items: Any, where: str) -> list[tuple[str, Any]]:
    """nemo2riva lists hold strings or one-key mappings; return (key, value-or-None) pairs."""
    out: list[tuple[str, Any]] = []
    for item in items or []:
        if isinstance(item, dict):
            out.extend((str(k), v) for k, v in item.items())
        elif isinstance(item, str):
            out.append((item, None))
        else:
            raise ValueError(f"{where}: entry {item!r} is neither a name nor a one-key mapping")
    return out


@dataclass
class Schema:
    name: str
    obj_cls: str
    metadata: list[tuple[str, Any]] = field(default_factory=list)
    artifact_properties: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    artifact_content: list[tuple[str, list[tuple[str, bool]]]] = field(default_factory=list)

    @property
    def model_class(self) -> str:
        return class_name(self.obj_cls)

    @classmethod
    def parse(cls, text: str, name: str) -> Schema:
        data = yamlio.load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"schema {name}: must be a mapping")
        metadata = _pairs(data.get("metadata"), f"schema {name} metadata")
        obj_cls = next((str(v) for k, v in metadata if k == "obj_cls"), None)
        if not obj_cls:
            raise ValueError(f"schema {name}: metadata has no obj_cls")
        props = [(k, dict(v or {})) for k, v in
                 _pairs(data.get("artifact_properties", data.get("file_properties")), f"schema {name}")]
        content = []
        for fname, keys in _pairs(data.get("artifact_content", data.get("file_content")), f"schema {name}"):
            content.append((fname, [(k, bool(v)) for k, v in _pairs(keys, f"schema {name} {fname}")]))
        return cls(name=name, obj_cls=obj_cls, metadata=metadata, artifact_properties=props, artifact_content=content)

    def check(self, metadata: dict[str, Any], artifacts: dict[str, dict[str, Any]],
              read_yaml: Callable[[str], Any]) -> list[str]:
        """Every violation of this schema by an archive (empty when it complies)."""
        v: list[str] = []
        for key, expected in self.metadata:
            if key in EXPORT_DIRECTIVES:
                continue
            actual = metadata.get(key, _MISSING)
            if actual is _MISSING:
                v.append(f"metadata '{key}' is missing (expected {expected})")
            elif key == "obj_cls":
                if class_name(actual) != self.model_class:
                    v.append(f"metadata obj_cls is {actual}, expected {self.obj_cls}")
            elif key.startswith("min_") and key.endswith("version"):
                have, need = _as_version(actual), _as_version(expected)
                if have is None:
                    v.append(f"metadata {key} {shown(actual)} is not a version")
                elif need is not None and have < need:
                    v.append(f"metadata {key} is {actual}, older than the {expected} this schema needs")
            elif not _same(expected, actual):
                v.append(f"metadata '{key}' is {shown(actual)}, expected {expected!r}")
        for pattern, required in self.artifact_properties:
            names = self._matching(pattern, artifacts)
            if not names:
                v.append(f"artifact '{pattern}' is missing")
                continue
            for name in names:
                for key, expected in required.items():
                    if key in EXPORT_DIRECTIVES:
                        continue
                    actual = artifacts[name].get(key, _MISSING)
                    if actual is _MISSING:
                        v.append(f"artifact '{name}' lacks property '{key}' (expected {expected})")
                    elif not _same(expected, actual):
                        v.append(f"artifact '{name}' property '{key}' is {shown(actual)}, expected {expected!r}")
        for fname, keys in self.artifact_content:
            if fname not in artifacts:
                v.append(f"artifact '{fname}' is missing (its content is checked)")
                continue
            try:
                data = read_yaml(fname)
            except ServiceMakerError:
                raise
            except Exception as err:  # noqa: BLE001 - reported as a violation
                v.append(f"artifact '{fname}' is not valid YAML: {err}")
                continue
            for dotted, names_artifact in keys:
                value = dotted_get(data, dotted)
                if value is _MISSING:
                    v.append(f"{fname}: key '{dotted}' is missing")
                elif names_artifact:
                    if not isinstance(value, str) or not value.strip():
                        v.append(f"{fname}: '{dotted}' must name an artifact of the archive, but is {shown(value)}")
                    elif strip_nemo(value) not in artifacts:
                        v.append(f"{fname}: '{dotted}' names artifact '{strip_nemo(value)}', which is not in the archive")
        return v

    @staticmethod
    def _matching(pattern: str, artifacts: dict[str, Any]) -> list[str]:
        if any(c in pattern for c in "*?["):
            return [n for n in artifacts if fnmatch.fnmatchcase(n, pattern)]
        if pattern in artifacts:
            return [pattern]
        if pattern.endswith(".onnx") and pattern + ".tar" in artifacts:
            return [pattern + ".tar"]
        return []


def load_schemas() -> dict[str, Schema]:
    """All bundled schemas, by model class name (e.g. ``TextClassificationModel``)."""
    out: dict[str, Schema] = {}
    root = resources.files("servicemaker.schemas")
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            schema = Schema.parse(entry.read_text(encoding="utf-8"), entry.name)
            if schema.model_class in out:
                raise RuntimeError(f"two schemas for {schema.model_class}: {out[schema.model_class].name}, {entry.name}")
            out[schema.model_class] = schema
    return out


def schema_for(model_class: str) -> Schema:
    schemas = load_schemas()
    if model_class not in schemas:
        raise ValidationError(f"no schema for model class '{model_class}'",
                              hint=f"supported classes: {', '.join(sorted(schemas))}")
    return schemas[model_class]
