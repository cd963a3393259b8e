"""Hypothesis strategies that turn a valid seed archive (tests/fuzz_seeds.py) into a damaged one.

A case either damages the seed's gzip stream (bit flips, bytes, insertions, truncation, trailing garbage, header
flags, CRC/size trailer) or edits it layer by layer and recompresses it: the manifest as a structure (values of
every type YAML can carry, tags, NaN/inf, huge numbers, wrong types, missing keys, encryption and sha256 props),
the manifest as text (tags, anchors, deep nesting, many nodes, long scalars, non-UTF-8), the members (data bit
flips, ciphertext IV/body/tag, truncation, extension, swaps, duplicates, extra, special and renamed members, the
model config as YAML, the inner tar of an ``.onnx.tar``), then the tar stream (header fields with or without a
fixed checksum, raw bytes, truncation, garbage, a missing end marker).
"""

from __future__ import annotations

import copy
import hashlib
import io
import tarfile
from typing import Any

import yaml
from hypothesis import reject
from hypothesis import strategies as st

from fuzz_seeds import CIPHER_ID, Member, Seed, gzip_bytes, seed_manifest_doc
from fuzzing import Case


class Long:
    """A long string, built when drawn (keeps the strategies' reprs short)."""

    def __init__(self, char: str, n: int) -> None:
        self.char, self.n = char, n

    def __repr__(self) -> str:
        return f"Long({self.char!r}, {self.n})"


def _expand(value: Any) -> Any:
    if isinstance(value, Long):
        return value.char * value.n
    if isinstance(value, tuple):
        return "".join(map(_expand, value))
    return value


def pick(options: list[Any]) -> st.SearchStrategy:
    return st.sampled_from(options).map(_expand)


NASTY = ["", " ", "\n", "\t", "[/]", "[bold]x", "[red", "\x1b[31mred", "%s%n", "{0}", "{}", "\u202e", "é", "😀",
         "null", "~", "true", "0x1F", "1e400", ".nan", "-.inf", "2020-01-01", "../../etc/passwd", "/abs", "nemo:",
         "nemo:../x", Long("a", 300), "\x00", "\x7f", "\x85", "\u2028", "C:\\x", "artifacts/x", "."]
SPEC_KEY = "pipeline_spec"

_hashable = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                      pick(NASTY), st.dates())
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63, max_value=2**300),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30), pick(NASTY),
    st.binary(max_size=24), st.dates(), st.datetimes(), st.sampled_from([float("nan"), float("inf"), -float("inf")]))
values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_hashable, inner, max_size=3),
                            st.frozensets(st.one_of(st.integers(), st.text(max_size=6)), max_size=3).map(set)),
    max_leaves=8)

PROP_VALUES: dict[str, list[Any]] = {
    "encryption": [False, None, "", "false", "none", True, "aes-256-gcm", CIPHER_ID, "abcdefghij", "AES-256-GCM",
                   "qwertyuio", 1, 0, [], {}, "aes-256-ctr"],
    "sha256": [None, False, "", "0" * 64, "f" * 64, int("1" * 64), 0, 123, [], {}, "0" * 63, "g" * 64],
    "hmac_sha256": [None, "", "0" * 64, 1, []],
    "kdf": ["scrypt", "pbkdf2", None, 1, "SCRYPT"],
    "kdf_n": [0, 1, 2, 3, 1024, 2**14, 2**16, 2**20, 2**21, 2**62, -1, 1.5, 1024.0, float("inf"), float("nan"),
              "1024", "x", True, None, [], 10**30],
    "kdf_r": [0, 1, 8, 16, 17, -1, 2**31, 1.0, "8", None, float("inf")],
    "kdf_p": [0, 1, 4, 5, 2**31, float("inf"), None],
    "salt": ["", "00", "0" * 32, "zz" * 16, 12345, None, "0" * 30, Long("0", 4096), b"raw"],
    "nonce": ["", "0" * 24, "0" * 22, "0" * 26, "zz" * 12, 0, None],
    "key_check": ["", "0" * 32, "0" * 31, 0, None, Long("0", 10_000)],
    "size": [0, -1, 10**30, "x", None, 1.5],
    "onnx": [True, False, "true", None, 1, "yes"],
    "artifact_type": ["File", "Memory", None, 1],
    "content_callback": ["BinaryContentCallback", None, [], "x"],
    "description": [None, "[/]", "[bold]x", "\n", "é" * 10, Long("a", 100_000)],
    "component": ["nn", None, "[/]", 1],
    "source": ["model_graph.onnx", None, "../x", 1],
}
META_VALUES: dict[str, list[Any]] = {
    "format_version": [3, 4, "3", None, -1, 2**64],
    "obj_cls": ["nemo.collections.nlp.models.QAModel", "X", "", None, 1, "a." * 100, "servicemaker.rmir.RMIR",
                "TextClassificationModel", "[/]", ["x"]],
    "min_nemo_version": ["1.3", "99", "x", 1.1, None, [], "1.0.0rc1", Long("1", 5000), float("nan")],
    "runtime": ["ONNX", None, 1, "Triton"],
    "description": [None, "[/]", "\n\n", Long("a", 100_000)],
    "has_pytorch_checkpoint": [True, "no", None],
    "onnx_archive_format": [1, "x", None],
    SPEC_KEY: [None, {}, [], "x", {"spec_version": 99}, {"spec_version": 1.5}, {"spec_version": float("nan")}],
}
SNIPPETS = [
    "x: !!binary AAAA", "x: !!binary '~~~ not base64'", "x: !!set {a, b}", "x: !!timestamp 2001-12-14",
    "x: 2001-12-14t21:59:43.10-05:00", "x: 2001-13-45", "x: .nan", "x: -.inf", "x: !!python/object:os.system {}",
    "x: &a [1]\ny: *a", "x: !!int 0xFFFF", "x: !!float 1e999", "? [a, b]\n: c", "x: !custom 1", "x: !!str",
    "x: !!map []", "x: !!seq {}", "x: !!bool maybe", "x: !!null x", "x: !!float abc", ("x: 0b", Long("1", 20000)),
    ("x: 0x", Long("f", 4000)), ("x: ", Long("9", 5000)), "x: 1_000_000", "x: 0o777", "x: 1:20", "x: !!timestamp nope",
    "%YAML 1.1\n---", "---", "...", "x: |\n  a\n b", "\tx: 1", "x: {a: 1, a: 2}", "x: [", "x: ]", "'x", "x: \"\\u\"",
    "x: !<tag:yaml.org,2002:python/name:os.system> ''", "x: !!omap [a: 1]", "x: !!pairs [a: 1]", "<<: {a: 1}",
    "x: !!bool 1", "x: !!int ''", "x: !!float", "x: !!int '+'", "x: !!timestamp ''", "x: !!binary ''",
]
HEAVY = "(heavy)"
KEY_MODES = ["right"] * 6 + ["wrong", "none"]
TAR_FIELDS = {"name": (0, 100), "mode": (100, 8), "uid": (108, 8), "size": (124, 12), "mtime": (136, 12),
              "chksum": (148, 8), "type": (156, 1), "linkname": (157, 100), "magic": (257, 8), "uname": (265, 32),
              "devmajor": (329, 8), "prefix": (345, 155)}
MEMBER_NAMES = ["../evil", "/etc/passwd", "manifest.yaml", "artifacts/", "artifacts/../manifest.yaml", "a\x00b", "",
                "./", ".", "artifacts/x/y", "C:\\x", "artifacts/extra.bin", "artifacts/manifest.yaml", "x" * 120,
                "artifacts/" + "é" * 20, "./artifacts/model_config.yaml", "artifacts//model_config.yaml"]


# --- manifest and YAML -----------------------------------------------------------------------------------------------

def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for part in path:
        doc = doc[part]
    return doc


@st.composite
def _edit_tree(draw, doc: Any, seed: Seed | None) -> tuple[Any, str]:
    """One structural edit of a YAML document; returns (new doc, description)."""
    kind = draw(st.sampled_from(["set", "set", "del", "add", "wrap", "rekey", "prop", "prop", "meta", "strip",
                                 "top"]))
    arts = doc.get("artifacts") if isinstance(doc, dict) else None
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    if (kind in ("prop", "strip") and not (isinstance(arts, dict) and arts)) or (kind == "meta" and
                                                                                   not isinstance(meta, dict)):
        kind = "set"
    if kind in ("prop", "strip"):
        name = draw(st.sampled_from(list(arts)))
        props = arts[name] if isinstance(arts[name], dict) else {}
        arts[name] = props
        if kind == "strip":
            for k in ("encryption", "sha256", "hmac_sha256", "kdf", "kdf_n", "kdf_r", "kdf_p", "salt", "nonce",
                      "key_check"):
                props.pop(k, None)
            return doc, f"strip integrity props of {name!r}"
        prop = draw(st.sampled_from(list(PROP_VALUES)))
        extra = [hashlib.sha256(d).hexdigest() for d in (seed.plaintexts.values() if seed else [])]
        value = draw(st.one_of(pick(PROP_VALUES[prop] + extra), values))
        props[prop] = value
        return doc, f"artifacts.{name}.{prop} = {value!r:.80}"
    if kind == "meta":
        key = draw(st.sampled_from(list(META_VALUES)))
        value = draw(st.one_of(pick(META_VALUES[key]), values, st.just(_MISSING)))
        if value is _MISSING:
            doc["metadata"].pop(key, None)
            return doc, f"del metadata.{key}"
        doc["metadata"][key] = value
        return doc, f"metadata.{key} = {value!r:.80}"
    if kind == "top":
        value = draw(st.one_of(values, st.just({"metadata": {}, "artifacts": {}, "extra": 1})))
        return value, f"document = {value!r:.80}"
    paths = _paths(doc)
    path = paths[draw(st.integers(0, len(paths) - 1))]
    if kind == "rekey" or kind == "del" or kind == "add":
        container = _get(doc, path[:-1]) if path else doc
        if kind == "add":
            target = _get(doc, path)
            if isinstance(target, dict):
                k, v = draw(_hashable), draw(values)
                target[k] = v
                return doc, f"add {path!r:.80}[{k!r:.40}] = {v!r:.60}"
            kind = "set"
        elif path and isinstance(container, (dict, list)):
            last = path[-1]
            if kind == "del":
                del container[last]
                return doc, f"del {path!r:.100}"
            if isinstance(container, dict):
                new = draw(_hashable)
                container[new] = container.pop(last)
                return doc, f"rekey {path!r:.80} -> {new!r:.40}"
        kind = "set"
    value = draw(values) if kind == "set" else [_get(doc, path)]
    if kind == "wrap" and draw(st.booleans()):
        value = {"x": _get(doc, path)}
    if not path:
        return value, f"document = {value!r:.80}"
    _get(doc, path[:-1])[path[-1]] = value
    return doc, f"{kind} {path!r:.100} = {value!r:.60}"


_MISSING = object()


def dump_yaml(doc: Any, flow: bool) -> str:
    try:
        return yaml.dump(doc, Dumper=yaml.SafeDumper, sort_keys=False, default_flow_style=flow, width=4096,
                         allow_unicode=True)
    except (yaml.YAMLError, TypeError, ValueError, RecursionError):
        reject()


def _mark(size: int) -> str:
    """Descriptions of the costliest inputs end with HEAVY (the long run rations them)."""
    return f" {HEAVY}" if size >= 100_000 else ""


@st.composite
def _edit_text(draw, text: bytes, heavy: bool) -> tuple[bytes, str]:
    """One edit of YAML text (bytes)."""
    kind = draw(st.sampled_from(["snippet", "snippet", "snippet", "char", "cut", "dupline", "deep", "nodes",
                                 "scalar", "encoding", "whole"]))
    lines = text.split(b"\n")
    at = draw(st.integers(0, len(lines)))
    if kind == "snippet":
        snippet = draw(pick(SNIPPETS)).encode()
        indent = draw(st.sampled_from([b"", b"  ", b"    "]))
        lines[at:at] = [indent + s for s in snippet.split(b"\n")]
        return b"\n".join(lines), f"text: insert {snippet[:60]!r} at line {at}"
    if kind == "char" and text:
        pos = draw(st.integers(0, len(text) - 1))
        ch = draw(st.sampled_from(list(b":-[]{}#&*!|>'\"%@` \t\n,?") + [0, 0xFF, 0x85]))
        return text[:pos] + bytes([ch]) + text[pos + 1:], f"text: byte {pos} = {ch:#x}"
    if kind == "cut" and text:
        a = draw(st.integers(0, len(text) - 1))
        b = draw(st.integers(a, min(len(text), a + 200)))
        return text[:a] + text[b:], f"text: cut {a}..{b}"
    if kind == "dupline" and lines:
        i = min(at, len(lines) - 1)
        lines.insert(i, lines[i])
        return b"\n".join(lines), f"text: duplicate line {i}"
    if kind == "deep":
        depth = draw(st.sampled_from([63, 64, 65, 200, 5000, 100_000]))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b"{a: ", b"}")]))
        return text + b"\nx: " + opener * depth + closer * depth + b"\n", f"text: nesting depth {depth}" + _mark(depth)
    if kind == "nodes":
        sizes = [1000, 100_000, 999_990, 1_000_010, 1_500_000] if heavy else [1000, 50_000]
        n = draw(st.sampled_from(sizes))
        style = draw(st.sampled_from(["flow", "keys"]))
        body = b"[" + b"0," * n + b"]" if style == "flow" else b"{" + b",".join(b"k%d: 0" % i for i in range(n)) + b"}"
        return text + b"\nx: " + body + b"\n", f"text: {n} nodes ({style})" + _mark(n)
    if kind == "scalar":
        n = draw(st.sampled_from([1024 * 1024 - 1, 1024 * 1024 + 1] + ([8 * 1024 * 1024] if heavy else [])))
        return text + b"\nx: " + b"a" * n + b"\n", f"text: a scalar of {n} characters" + _mark(n // 80)
    if kind == "encoding":
        how = draw(st.sampled_from(["bom", "utf16", "latin1", "ff"]))
        if how == "bom":
            return b"\xef\xbb\xbf" + text, "text: UTF-8 BOM"
        if how == "utf16":
            return text.decode("utf-8", "replace").encode("utf-16"), "text: UTF-16"
        if how == "ff":
            return text[:at] + b"\xff\xfe" + text[at:], f"text: bytes ff fe at {at}"
        return text.replace(b"e", b"\xe9"), "text: latin-1 e-acute"
    whole = draw(st.sampled_from([b"", b"null", b"[]", b"---\n...\n", b"x", b"metadata: 1\nartifacts: 2\n",
                                  b"{metadata: {}, artifacts: {}}", b"metadata: {}\nartifacts:\n  '': {}\n",
                                  b"artifacts: {a: {}, b: {}}\n"]))
    return whole, f"text: replace with {whole!r}"


@st.composite
def yaml_edits(draw, text: bytes, seed: Seed | None, heavy: bool, doc: Any = None) -> tuple[bytes, list[str]]:
    """0-2 structural edits then 0-1 text edits (at least one edit)."""
    n_tree, n_text = draw(st.integers(0, 2)), draw(st.integers(0, 1))
    if n_tree + n_text == 0:
        n_tree = 1
    ops = []
    if n_tree:
        try:
            doc = copy.deepcopy(doc) if doc is not None else yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError):  # an earlier edit broke the text or nested it past PyYAML's reach
            reject()
        for _ in range(n_tree):
            doc, desc = draw(_edit_tree(doc, seed))
            ops.append(desc)
        try:
            text = dump_yaml(doc, draw(st.booleans())).encode("utf-8")
        except RecursionError:  # too deep for the generator's own YAML writer: not an input we can make
            reject()
    for _ in range(n_text):
        text, desc = draw(_edit_text(text, heavy))
        ops.append(desc)
    return text, ops


# --- members -----------------------------------------------------------------------------------------------------

@st.composite
def _edit_data(draw, data: bytes, encrypted: str | None) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["flip", "flip", "byte", "truncate", "extend", "random", "empty"]))
    if kind in ("flip", "byte") and data:
        where = draw(st.sampled_from(["any", "start", "end"])) if encrypted else "any"
        n = len(data)
        pos = {"any": draw(st.integers(0, n - 1)), "start": draw(st.integers(0, min(15, n - 1))),
               "end": draw(st.integers(max(0, n - 16), n - 1))}[where]
        new = data[pos] ^ (1 << draw(st.integers(0, 7))) if kind == "flip" else draw(st.integers(0, 255))
        return data[:pos] + bytes([new]) + data[pos + 1:], f"{kind} byte {pos}/{n} ({where})"
    if kind == "truncate" and data:
        k = draw(st.integers(0, len(data) - 1))
        return data[:k], f"truncate to {k}/{len(data)}"
    if kind == "extend":
        extra = draw(st.binary(min_size=1, max_size=64))
        return data + extra, f"append {len(extra)} bytes"
    if kind == "random":
        return draw(st.binary(min_size=len(data), max_size=len(data))), "random bytes"
    return b"", "empty"


@st.composite
def _edit_members(draw, seed: Seed, members: list[Member], heavy: bool) -> str:
    """One edit of the member list, in place; returns its description."""
    files = [i for i, m in enumerate(members) if m.type == tarfile.REGTYPE and m.name != seed.manifest_member]
    kinds = ["data", "data", "data", "drop", "dup", "extra", "special", "move", "rename", "swap"]
    config = [i for i in files if members[i].name.endswith("model_config.yaml")]
    inner = [i for i in files if members[i].name.endswith(".onnx.tar")]
    if seed.key is None and config:
        kinds += ["config", "config"]
    if seed.key is None and inner:
        kinds += ["inner", "inner"]
    kind = draw(st.sampled_from(kinds))
    i = draw(st.sampled_from(files))
    m = members[i]
    if kind == "data":
        m.data, desc = draw(_edit_data(m.data, seed.key))
        return f"member {m.name}: {desc}"
    if kind == "config":
        m.data, ops = draw(yaml_edits(m.data, None, heavy))
        return f"member {m.name}: " + "; ".join(ops)
    if kind == "inner":
        tar = bytearray(m.data)
        m.data, desc = draw(tar_edit(tar))
        return f"member {m.name} (inner tar): {desc}"
    if kind == "drop":
        del members[i]
        return f"drop member {m.name}"
    if kind == "dup":
        members.insert(draw(st.integers(0, len(members))), Member(m.name, draw(st.sampled_from([m.data, b"x"]))))
        return f"duplicate member {m.name}"
    if kind == "extra":
        name = draw(st.sampled_from(MEMBER_NAMES))
        members.insert(draw(st.integers(0, len(members))), Member(name, b"extra"))
        return f"extra member {name!r}"
    if kind == "special":
        name = draw(st.sampled_from(MEMBER_NAMES + [m.name]))
        typ = draw(st.sampled_from([tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE,
                                    tarfile.CHRTYPE, tarfile.CONTTYPE]))
        link = draw(st.sampled_from(["/etc/passwd", "../x", m.name, ""]))
        members.insert(draw(st.integers(0, len(members))), Member(name, b"", typ, link))
        return f"special member {name!r} type {typ!r} -> {link!r}"
    if kind == "move":
        j = draw(st.integers(0, len(members) - 1))
        members.insert(j, members.pop(i))
        return f"move member {m.name} to {j}"
    if kind == "rename":
        name = draw(st.sampled_from(MEMBER_NAMES + ["./" + m.name, m.name.upper(), m.name.split("/")[-1],
                                                    "artifacts/" + m.name.split("/")[-1] + "x"]))
        members[i] = Member(name, m.data, m.type)
        return f"rename member {m.name} -> {name!r}"
    j = draw(st.sampled_from([f for f in files if f != i] or [i]))
    members[i].data, members[j].data = members[j].data, members[i].data
    return f"swap data of {members[i].name} and {members[j].name}"


def tar_from(members: list[Member], fmt: int) -> bytes:
    buf = io.BytesIO()
    try:
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            for m in members:
                info = tarfile.TarInfo(m.name)
                info.mode, info.mtime, info.type, info.linkname = 0o600, 0, m.type, m.linkname
                if m.type in (tarfile.REGTYPE, tarfile.CONTTYPE):
                    info.size = len(m.data)
                    tf.addfile(info, io.BytesIO(m.data))
                else:
                    tf.addfile(info)
    except (ValueError, UnicodeError, tarfile.TarError):
        reject()
    return buf.getvalue()


# --- tar and gzip streams -------------------------------------------------------------------------------------------

def header_offsets(tar: bytes) -> list[int]:
    offs, pos = [], 0
    while pos + 512 <= len(tar) and tar[pos:pos + 512] != bytes(512):
        offs.append(pos)
        try:
            size = int(tar[pos + 124:pos + 136].rstrip(b"\0 ").decode() or "0", 8)
        except ValueError:
            break
        pos += 512 + -(-size // 512) * 512
    return offs


def fix_checksum(tar: bytearray, off: int) -> None:
    tar[off + 148:off + 156] = b" " * 8
    tar[off + 148:off + 156] = b"%06o\0 " % sum(tar[off:off + 512])


def _octal(raw: bytes) -> int:
    try:
        return int(raw.rstrip(b"\0 ").decode() or "0", 8)
    except ValueError:
        return 0


def _field_value(draw, name: str, width: int, old: bytes) -> bytes:
    octal = st.integers(0, 8 ** (width - 1) - 1).map(lambda v: b"%0*o\0" % (width - 1, v))
    special = {
        "size": st.one_of(octal, st.binary(min_size=width - 1, max_size=width - 1).map(lambda b: b"\x80" + b),
                          st.binary(min_size=width - 1, max_size=width - 1).map(lambda b: b"\xff" + b),
                          st.sampled_from([-513, -512, -1, 1, 511, 512]).map(
                              lambda d: b"%0*o\0" % (width - 1, max(0, _octal(old) + d)))),
        "type": st.one_of(st.sampled_from([bytes([c]) for c in b"0\x0012345679LKxgSVMDA"]), st.binary(min_size=1,
                                                                                                      max_size=1)),
        "name": st.one_of(st.sampled_from([n.encode() for n in MEMBER_NAMES]), st.binary(max_size=100),
                          st.just(b"n" * 100)),
        "magic": st.sampled_from([b"ustar\x0000", b"ustar  \x00", bytes(8), b"ustar\x00xx"]),
        "prefix": st.sampled_from([b"", b"..", b"/abs", b"artifacts", b"a" * 155]),
    }
    strat = special.get(name, st.one_of(octal, st.binary(min_size=width, max_size=width)))
    return draw(strat)[:width].ljust(width, b"\0")


@st.composite
def tar_edit(draw, tar: bytearray) -> tuple[bytes, str]:
    """One edit of an uncompressed tar stream."""
    offs = header_offsets(bytes(tar))
    kind = draw(st.sampled_from(["field", "field", "field", "flip", "truncate", "garbage", "noend"]))
    if kind == "field" and offs:
        off = draw(st.sampled_from(offs))
        name = draw(st.sampled_from(list(TAR_FIELDS)))
        start, width = TAR_FIELDS[name]
        value = _field_value(draw, name, width, bytes(tar[off + start:off + start + width]))
        tar[off + start:off + start + width] = value
        fixed = name != "chksum" and draw(st.sampled_from([True, True, True, False]))
        if fixed:
            fix_checksum(tar, off)
        return bytes(tar), f"tar header @{off} {name} = {value[:40]!r}{' (checksum fixed)' if fixed else ''}"
    if kind == "flip" and tar:
        pos = draw(st.integers(0, len(tar) - 1))
        tar[pos] ^= 1 << draw(st.integers(0, 7))
        return bytes(tar), f"tar flip byte {pos}"
    if kind == "truncate" and tar:
        k = draw(st.integers(0, len(tar) - 1))
        return bytes(tar[:k]), f"tar truncated to {k}/{len(tar)}"
    if kind == "noend" and offs:
        last = offs[-1]
        size = _octal(bytes(tar[last + 124:last + 136]))
        end = last + 512 + -(-size // 512) * 512
        return bytes(tar[:end]), "tar without its end-of-archive blocks"
    junk = draw(st.one_of(st.binary(min_size=1, max_size=1024), st.just(bytes(512) + b"junk")))
    return bytes(tar) + junk, f"tar + {len(junk)} garbage bytes"


@st.composite
def gzip_edit(draw, data: bytes) -> tuple[bytes, str]:
    """One edit of a gzip stream."""
    n = len(data)
    kind = draw(st.sampled_from(["flip", "flip", "flip", "byte", "insert", "delete", "truncate", "append",
                                 "trailer", "header"])) if n >= 10 else "append"
    if kind in ("flip", "byte"):
        pos = draw(st.one_of(st.integers(0, n - 1), st.integers(max(0, n - 12), n - 1)))
        new = data[pos] ^ (1 << draw(st.integers(0, 7))) if kind == "flip" else draw(st.integers(0, 255))
        return data[:pos] + bytes([new]) + data[pos + 1:], f"gzip {kind} byte {pos}/{n}"
    if kind == "insert":
        pos = draw(st.integers(0, n))
        return data[:pos] + draw(st.binary(min_size=1, max_size=4)) + data[pos:], f"gzip insert at {pos}/{n}"
    if kind == "delete":
        pos = draw(st.integers(0, n - 1))
        k = draw(st.integers(1, 8))
        return data[:pos] + data[pos + k:], f"gzip delete {k} at {pos}/{n}"
    if kind == "truncate":
        k = draw(st.one_of(st.integers(0, n - 1), st.integers(max(0, n - 10), n - 1)))
        return data[:k], f"gzip truncated to {k}/{n}"
    if kind == "append":
        junk = draw(st.one_of(st.binary(min_size=1, max_size=64), st.just(b"\0" * 1024), st.just(gzip_bytes(b"junk")),
                              st.just(data)))
        return data + junk, f"gzip + {len(junk)} trailing bytes"
    if kind == "trailer":
        pos = n - draw(st.integers(1, 8))
        return data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:], f"gzip trailer byte {pos}/{n} inverted"
    which = draw(st.sampled_from([2, 3, 8, 9]))  # method, flags, extra flags, OS
    value = draw(st.integers(0, 255))
    return data[:which] + bytes([value]) + data[which + 1:], f"gzip header byte {which} = {value}"


# --- cases -----------------------------------------------------------------------------------------------------------

@st.composite
def cases(draw, seeds: list[Seed], heavy: bool = False) -> Case:
    """A damaged archive made from one of ``seeds``. ``heavy`` adds the costliest inputs (1.5M YAML nodes, an
    8 MiB scalar) for the long run."""
    seed = draw(st.sampled_from(seeds))
    key_mode = draw(st.sampled_from(KEY_MODES)) if seed.key else "none"
    if draw(st.integers(0, 3)) == 0:
        data, ops = seed.archive, []
        for _ in range(draw(st.integers(1, 3))):
            data, desc = draw(gzip_edit(data))
            ops.append(desc)
        return Case(seed, data, key_mode, ops, gzip_level=True)
    members = [Member(m.name, m.data, m.type, m.linkname) for m in seed.members]
    n_manifest, n_member, n_tar = draw(st.integers(0, 1)), draw(st.integers(0, 2)), draw(st.integers(0, 1))
    if n_manifest + n_member + n_tar == 0:
        which = draw(st.sampled_from(["manifest", "manifest", "member", "tar"]))
        n_manifest, n_member, n_tar = which == "manifest", which == "member", which == "tar"
    ops: list[str] = []
    if n_manifest:
        idx = next(i for i, m in enumerate(members) if m.name == seed.manifest_member)
        members[idx].data, edits = draw(yaml_edits(seed.manifest_text, seed, heavy, doc=seed_manifest_doc(seed)))
        ops += edits
    for _ in range(n_member):
        ops.append(draw(_edit_members(seed, members, heavy)))
    tar = tar_from(members, seed.fmt)
    if n_tar:
        tar, desc = draw(tar_edit(bytearray(tar)))
        ops.append(desc)
    return Case(seed, gzip_bytes(tar), key_mode, ops, gzip_level=False)
