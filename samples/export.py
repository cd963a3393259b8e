"""Write model exports the way NeMo/nemo2riva (NVIDIA's EFF library) lays them out.

This is independent of servicemaker's RMIR writer on purpose: manifest first, artifacts after it, flow- or
block-style YAML, registry (``artifacts/``) or root layout, plain or legacy-EFF encryption, exactly as DESIGN.md
describes NVIDIA's archives. Tests use it to prove the reader accepts archives written by other tools.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from servicemaker.eff.codecs import encoder_for
from servicemaker.keys import Secret


@dataclass
class Artifact:
    name: str
    data: bytes
    props: dict[str, Any] = field(default_factory=dict)


def nemo_name(data: bytes, basename: str) -> str:
    """NeMo stores config-referenced files under a content-hash prefix: ``<hex>_<basename>``."""
    return f"{hashlib.md5(data).hexdigest()}_{basename}"  # noqa: S324 - a name, not security


def text_artifact(name: str, text: str, description: str = "") -> Artifact:
    return Artifact(name, text.encode("utf-8"), {"artifact_type": "File", "content_callback": "StringContentCallback",
                                                  "description": description})


def binary_artifact(name: str, data: bytes, description: str = "", **extra: Any) -> Artifact:
    props = {"artifact_type": "File", "content_callback": "BinaryContentCallback", "description": description}
    props.update(extra)
    return Artifact(name, data, props)


def write_export(path: str | Path, obj_cls: str, artifacts: list[Artifact], *, metadata: dict[str, Any] | None = None,
                 key: str | None = None, legacy: tuple[str, bytes] | None = None, layout: str = "registry",
                 flow: bool = False, prefix: str = "") -> Path:
    """Write an EFF export. ``legacy=(cipher_id, salt)`` with ``key`` encrypts like NVIDIA's EFF; ``key`` alone
    uses servicemaker's AES-256-GCM. ``prefix='./'`` mimics ``tar -C dir .``."""
    meta = {"format_version": 3, "obj_cls": obj_cls, "description": f"{obj_cls.rsplit('.', 1)[-1]} export",
            "min_nemo_version": "1.3", "has_pytorch_checkpoint": False, "runtime": "ONNX"}
    meta.update(metadata or {})
    secret = Secret(key) if key else None
    payloads: list[tuple[str, bytes]] = []
    manifest_artifacts: dict[str, dict[str, Any]] = {}
    for art in artifacts:
        enc = encoder_for(art.name, secret, legacy=legacy)
        payload = enc.header() + enc.update(art.data) + enc.finish()
        props = dict(art.props)
        props.update(enc.props)
        if secret is not None:
            props["sha256"] = hashlib.sha256(art.data).hexdigest()
        manifest_artifacts[art.name] = props
        member = f"artifacts/{art.name}" if layout == "registry" else art.name
        payloads.append((prefix + member, payload))
    doc = {"metadata": meta, "artifacts": manifest_artifacts}
    text = yaml.safe_dump(doc, default_flow_style=True if flow else False, sort_keys=False, width=4096)
    path = Path(path)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in [(prefix + "manifest.yaml", text.encode("utf-8"))] + payloads:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            tf.addfile(info, io.BytesIO(data))
    return path


def nlp_export(path: str | Path, model_class: str, graph: bytes, *, vocab: str, lm_config: str,
               labels: dict[str, list[str]], pretrained_model_name: str, max_seq_length: int = 128,
               extra_config: dict[str, Any] | None = None, graph_name: str = "model_graph.onnx",
               **write_kw: Any) -> Path:
    """A NeMo-shaped NLP export: model_graph.onnx, model_config.yaml and the ``nemo:`` files it references.

    ``labels`` maps a ``class_labels`` key (e.g. ``class_labels_file``) to the label list, one per line.
    """
    vocab_bytes = vocab.encode()
    cfg_bytes = lm_config.encode()
    vocab_name = nemo_name(vocab_bytes, "vocab.txt")
    cfg_name = nemo_name(cfg_bytes, "lm_config.json")
    arts = [binary_artifact(graph_name, graph, "exported graph", onnx=True),
            text_artifact(vocab_name, vocab, "tokenizer vocabulary"),
            text_artifact(cfg_name, lm_config, "language model config")]
    class_labels: dict[str, str] = {}
    for key, values in labels.items():
        data = ("\n".join(values) + "\n")
        name = nemo_name(data.encode(), key.replace("_file", "") + ".csv")
        arts.append(text_artifact(name, data, f"labels ({key})"))
        class_labels[key] = f"nemo:{name}"
    config: dict[str, Any] = {
        "tokenizer": {"tokenizer_name": pretrained_model_name, "vocab_file": f"nemo:{vocab_name}",
                      "tokenizer_model": None, "special_tokens": None, "do_lower_case": True},
        "language_model": {"pretrained_model_name": pretrained_model_name, "lm_checkpoint": None,
                           "config_file": f"nemo:{cfg_name}", "config": None},
        "dataset": {"max_seq_length": max_seq_length},
        "class_labels": class_labels,
    }
    for k, v in (extra_config or {}).items():
        config.setdefault(k, {}).update(v) if isinstance(v, dict) else config.__setitem__(k, v)
    arts.insert(1, text_artifact("model_config.yaml", yaml.safe_dump(config, sort_keys=False), "model config"))
    return write_export(path, f"nemo.collections.nlp.models.{model_class}", arts, **write_kw)
