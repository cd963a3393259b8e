"""Fuzz seeds: small valid EFF archives written deterministically (tests/fuzzing.py explains the run).

No trained model: a tiny ONNX graph built here with the NLP interface (svc-build scans a graph's inputs and outputs
but does not run it). The seeds: NeMo-layout exports, plain, legacy EFF (AES-CTR with a fixed salt) and
servicemaker AES-GCM, block and flow YAML, registry and root layout, a graph shipped as ``.onnx.tar``; and RMIRs
built from the plain export, plain and encrypted.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import tarfile
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import yaml

from servicemaker.build import BuildOptions, build
from servicemaker.eff import codecs
from servicemaker.eff.codecs import KeyRing, SaltTable, encryption_of
from servicemaker.eff.reader import EffReader
from servicemaker.keys import ArchiveArg, Secret
from servicemaker.samples.export import nlp_export

CIPHER_ID = "qwertyuiop"
SALT = hashlib.sha256(b"servicemaker fuzz salt").digest()
KEY = "tlt_encode"
#: props by which an archive claims an artifact's integrity (besides encryption)
DIGEST_PROPS = ("sha256", "hmac_sha256")


@dataclass
class Member:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""


@dataclass
class Seed:
    name: str
    pipeline: str
    key: str | None
    suffix: str
    archive: bytes
    members: list[Member]
    fmt: int
    plaintexts: dict[str, bytes]
    protected: set[str]
    manifest_member: str
    doc: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Seed({self.name})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis prints dataclasses field by field
        printer.text(repr(self))

    @property
    def manifest_text(self) -> bytes:
        return next(m.data for m in self.members if m.name == self.manifest_member)


class _DeterministicOs:
    """``os`` for the codecs while seeds are written: ``urandom`` from a seeded generator (salts, IVs, nonces)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def urandom(self, n: int) -> bytes:
        return self._rng.randbytes(n)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def _inner_onnx_tar(graph: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("model.onnx", graph), ("weights/w0.bin", bytes(range(256)) * 4)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, 0
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tiny_graph(per_token: bool) -> bytes:
    """A real ONNX graph with the NLP interface: input_ids/token_type_ids/attention_mask → logits, [batch, 2]
    (a sequence head) or [batch, seq, 2] (a per-token head, as QA's start/end logits)."""
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
            for n in ("input_ids", "token_type_ids", "attention_mask")]
    table = numpy_helper.from_array(np.arange(64 * 2, dtype=np.float32).reshape(64, 2) / 100, "table")
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["per_token" if not per_token else "logits"])]
    if not per_token:
        nodes.append(helper.make_node("ReduceMean", ["per_token"], ["logits"], axes=[1], keepdims=0))
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", 2] if per_token else
                                        ["batch", 2])
    graph = helper.make_graph(nodes, "tiny", ints, [out], initializer=[table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="fuzz")
    model.ir_version = 8
    return model.SerializeToString()


def tiny_export(path: Path, model_class: str, **kw: Any) -> Path:
    """A NeMo-layout NLP export of :func:`tiny_graph` (``samples/export.py``'s writer; ``onnx_tar=True`` ships the
    graph as ``model_graph.onnx.tar``)."""
    graph = tiny_graph(per_token=model_class == "QAModel")
    if kw.pop("onnx_tar", False):
        kw.update(graph_name="model_graph.onnx.tar")
        graph = _inner_onnx_tar(graph)
    labels = {"class_labels_file": ["negative", "positive"]} if model_class == "TextClassificationModel" else {}
    return nlp_export(path, model_class, graph, vocab="[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\nweather\nis\n",
                      lm_config=json.dumps({"hidden_size": 32, "num_hidden_layers": 2}), labels=labels,
                      pretrained_model_name="tiny-bert", max_seq_length=64, **kw)


def salt_table() -> SaltTable:
    return SaltTable({CIPHER_ID: SALT}, origin="fuzz salts")


def _load_seed(path: Path, name: str, pipeline: str, key: str | None, fmt: int) -> Seed:
    archive = path.read_bytes()
    members: list[Member] = []
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        for info in tf:
            members.append(Member(info.name, tf.extractfile(info).read() if info.isfile() else b"", info.type))
    manifest_member = next(m.name for m in members if m.name.endswith("manifest.yaml"))
    plaintexts: dict[str, bytes] = {}
    with EffReader(path, KeyRing(key=Secret(key) if key else None, salts=salt_table())) as reader:
        for art in reader.artifacts:
            plaintexts[art] = reader.read_bytes(art)
        protected = {n for n, p in reader.artifacts.items() if claims_integrity(p)}
    return Seed(name, pipeline, key, path.suffix, archive, members, fmt, plaintexts, protected, manifest_member)


def claims_integrity(props: Any) -> bool:
    if not isinstance(props, dict):
        return False
    try:
        encrypted = encryption_of(props) is not None
    except Exception:  # noqa: BLE001 - a prop of a type the product rejects: no claim
        encrypted = False
    return encrypted or any(props.get(k) not in (None, False, "") for k in DIGEST_PROPS)


def _write_seeds(folder: Path, problems: list[str]) -> list[Seed]:
    seeds = []
    tc, tcl = "TextClassificationModel", "text_classification"

    def rmir(key: str | None) -> Callable[[Path], Path]:
        def write(out: Path) -> Path:
            build(BuildOptions(pipeline=tcl, output=ArchiveArg(out, Secret(key) if key else None),
                               inputs=[ArchiveArg(folder / "tc_plain.riva", None)]))
            return out
        return write

    specs = [
        ("tc_plain.riva", tcl, None, lambda p: tiny_export(p, tc)),
        ("qa_flow_root.riva", "qa", None, lambda p: tiny_export(p, "QAModel", layout="root", flow=True, prefix="./")),
        ("tc_legacy.riva", tcl, KEY, lambda p: tiny_export(p, tc, key=KEY, legacy=(CIPHER_ID, SALT))),
        ("tc_gcm.riva", tcl, KEY, lambda p: tiny_export(p, tc, key=KEY)),
        ("tc_onnx_tar.riva", tcl, None, lambda p: tiny_export(p, tc, onnx_tar=True)),
        ("tc_rmir.rmir", tcl, None, rmir(None)),
        ("tc_rmir_gcm.rmir", tcl, KEY, rmir(KEY)),
    ]
    for file_name, pipeline, key, write in specs:
        name = file_name.split(".")[0]
        fmt = tarfile.PAX_FORMAT if file_name.endswith(".rmir") else tarfile.GNU_FORMAT
        try:
            seeds.append(_load_seed(write(folder / file_name), name, pipeline, key, fmt))
        except Exception as err:  # noqa: BLE001 - reported by make_seeds
            problems.append(f"seed {name} cannot be written: {type(err).__name__}: {err}{where(err)}")
    return seeds


#: scrypt cost n of the AES-GCM seeds (the reader accepts any power of two >= 2): ~1 ms a derivation, not ~0.2 s
CHEAP_SCRYPT_N = 2**10


def _cheap_scrypt(stack: ExitStack, n: int) -> None:
    """Make the writer use scrypt cost ``n`` (the module constant and the derivation's default argument)."""
    if hasattr(codecs, "SCRYPT_N"):
        stack.enter_context(mock.patch.object(codecs, "SCRYPT_N", n))
    derive = getattr(getattr(getattr(codecs, "GcmKeys", None), "derive", None), "__func__", None)
    defaults = getattr(derive, "__defaults__", None)
    if defaults and len(defaults) == 3:
        stack.enter_context(mock.patch.object(derive, "__defaults__", (n,) + defaults[1:]))


def make_seeds(folder: Path, check: Callable[[Seed], None], missing: list[str] | None = None) -> list[Seed]:
    """Write the seeds into ``folder`` and ``check`` each one (it raises :class:`SeedRefused` unless the seed
    passes the oracle unmutated, so findings are the mutations' doing). AES-GCM seeds use a cheap scrypt cost when the reader accepts it (fast cases).

    A seed the current code cannot write or refuses raises, unless ``missing`` is given: then it is left out
    and the reason appended to ``missing`` (the long run fuzzes what it can while the code is being changed)."""
    best: tuple[list[Seed], list[str]] | None = None
    for scrypt_n in (CHEAP_SCRYPT_N, None):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        problems: list[str] = []
        with ExitStack() as stack:
            stack.enter_context(mock.patch.object(codecs, "os", _DeterministicOs(12)))
            if scrypt_n is not None:
                _cheap_scrypt(stack, scrypt_n)
            written = _write_seeds(folder, problems)
        seeds = []
        for seed in written:
            try:
                check(seed)
                seeds.append(seed)
            except SeedRefused as err:
                problems.append(str(err))
        if not problems:
            return seeds
        if best is None or len(problems) < len(best[1]):
            best = (seeds, problems)
        if not any("gcm" in p and "refused" in p for p in problems):
            break  # the scrypt cost is not the problem
    assert best is not None
    if missing is None or not best[0]:
        raise RuntimeError("the fuzz seeds are not accepted by the current code: " + "; ".join(best[1]))
    missing.extend(best[1])
    return best[0]


class SeedRefused(Exception):
    pass


def where(exc: BaseException | None) -> str:
    if exc is None or exc.__traceback__ is None:
        return ""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    path = frame.filename.replace("\\", "/")
    path = path[path.rfind("servicemaker/"):] if "servicemaker/" in path else path.rsplit("/", 1)[-1]
    return f" (at {path}:{frame.lineno} in {frame.name})"


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def seed_manifest_doc(seed: Seed) -> Any:
    return copy.deepcopy(yaml.safe_load(seed.manifest_text))

