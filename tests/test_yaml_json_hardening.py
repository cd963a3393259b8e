"""Hostile YAML, strict JSON from svc-inspect, key checks and bounded messages.

YAML: nesting, huge integers, huge documents and aliases are refused with one YamlError (ArchiveError, exit 3,
through the reader) on both the libyaml and the pure-Python path. svc-inspect --json prints strict JSON whatever
YAML types the manifest holds; a wrong key given to svc-inspect exits 4; no message is unbounded.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import time

import pytest
import yaml

from servicemaker import yamlio
from servicemaker.cli.inspect import app as inspect_app
from servicemaker.eff.manifest import Manifest
from servicemaker.eff.reader import EffReader
from servicemaker.eff.writer import EffWriter
from servicemaker.errors import MAX_MESSAGE_CHARS, ArchiveError, ValidationError, bounded
from servicemaker.inspect import jsonable
from servicemaker.keys import Secret

from conftest import CIPHER_ID, edit_manifest, rewrite_tar

BOTH = pytest.mark.parametrize("pure", [False, True], ids=["libyaml", "python"])


def load(text, pure=False, **limits):
    return yamlio.load(text, yamlio.YamlLimits(**limits) if limits else yamlio.DEFAULT_LIMITS, pure_python=pure)


def refused(text, pure=False, **limits) -> str:
    with pytest.raises(yamlio.YamlError) as err:
        load(text, pure, **limits)
    return str(err.value)


def run(runner, args):
    result = runner.invoke(inspect_app, args)
    return result.exit_code, result.output


# -- the YAML loader ----------------------------------------------------------------------------------------------

def test_libyaml_is_the_default_parser():
    assert yaml.__with_libyaml__, "PyYAML here is built with libyaml; the hardened C path must be tested"
    assert issubclass(yamlio._LOADER, yaml.CSafeLoader)


@BOTH
@pytest.mark.parametrize("text", ["[" * 1000 + "]" * 1000, "{a: " * 1000 + "1" + "}" * 1000,
                                  "".join("  " * i + "- \n" for i in range(1000)) + "  " * 1000 + "x\n",
                                  "".join("  " * i + "k:\n" for i in range(1000)) + "  " * 1000 + "v\n"])
def test_deep_nesting_refused(text, pure):
    assert "nesting deeper than 64 levels at line" in refused(text, pure)


@BOTH
def test_nesting_at_the_limit_loads(pure):
    expected: list = []
    for _ in range(63):
        expected = [expected]
    assert load("[" * 64 + "]" * 64, pure) == expected
    assert "nesting deeper than 64" in refused("[" * 65 + "]" * 65, pure)


@BOTH
@pytest.mark.parametrize("written", ["1" * 100_000, "-" + "9" * 4301, "1_" * 4301 + "1", "0x" + "f" * 3572,
                                     "0b" + "1" * 20_000, "0" + "7" * 5000])
def test_huge_integers_refused(written, pure):
    message = refused(f"n: {written}\n", pure)
    assert "an integer of" in message and "4300" in message and "at line 1, column 4" in message
    assert len(message) < 200  # the digits are not echoed


@BOTH
def test_integers_up_to_the_limit_load(pure):
    assert load("n: " + "9" * 4300, pure)["n"] == 10 ** 4300 - 1
    assert load("n: -0x" + "f" * 3571, pure)["n"] == -(16 ** 3571 - 1)
    assert load("n: [0b101, 017, 1_000, +3, 1:30]", pure)["n"] == [5, 15, 1000, 3, 90]


@BOTH
@pytest.mark.parametrize("text,problem", [
    ("a: &x [1]\nb: 2\n", "YAML anchors are not allowed at line 1, column 4"),
    ("a: *x\n", "YAML aliases are not allowed at line 1, column 4"),
    ("a: &x 1\nb: *x\n", "YAML anchors are not allowed at line 1, column 4"),
    ("- &a [x, x]\n- &b [*a, *a]\n", "YAML anchors are not allowed at line 1, column 3"),
])
def test_anchors_and_aliases_refused_on_both_parsers(text, problem, pure):
    assert refused(text, pure) == problem


@BOTH
@pytest.mark.parametrize("text,problem", [
    ("d: 2024-13-45\n", "invalid timestamp value: month must be in 1..12 at line 1, column 4"),
    ("d: 2001-12-14t21:59:43.10+99:00\n", "invalid timestamp value"),
    ("? [a]\n: 1\n", "found unhashable key"),
    ("a: 1\n---\nb: 2\n", "expected a single document, but found another one at line 2, column 1"),
    ("x: !!python/object/apply:os.system [ls]\n", "could not determine a constructor"),
    ("a: b\x07\n", "unacceptable character #x0007"),
])
def test_bad_values_are_yaml_errors(text, problem, pure):
    assert problem in refused(text, pure)


@BOTH
def test_long_scalar_and_tag_refused_without_echo(pure):
    message = refused("v: " + "z" * 5000, pure, max_scalar=4096)
    assert message == "a value of 5000 characters (limit 4096) at line 1, column 4"
    message = refused("v: !t" + "z" * 20_000 + " 1\n", pure)
    assert "could not determine a constructor" in message and "characters omitted" in message
    assert len(message) < yamlio.MAX_PROBLEM_CHARS + 100


@BOTH
def test_node_limit_counts_keys_values_and_collections(pure):
    assert load("[a, {b: c}]", pure, max_nodes=5) == ["a", {"b": "c"}]
    assert "more than 4 nodes" in refused("[a, {b: c}]", pure, max_nodes=4)


def test_text_size_cap():
    assert "over the 100-byte limit" in refused(b"a: " + b"x" * 100, max_chars=100)
    assert "over the 100-character limit" in refused("a: " + "x" * 100, max_chars=100)
    assert load("a: " + "x" * 97, max_chars=100) == {"a": "x" * 97}


def test_both_parsers_give_the_same_data():
    text = ("a: [1, -2.5e3, .inf, -.inf, null, true, 'x', \"\\u00e9\"]\nb: {c: 2024-05-06, d: 2024-05-06T07:08:09+02:00}\n"
            "e: !!binary AP9oaQ==\nf: !!set {x, y}\n2020-01-01: 0x1F\ng: !!omap [{k: 1}, {j: 2}]\n")
    c, py = load(text), load(text, pure=True)
    assert c == py and c["e"] == b"\x00\xffhi" and c[datetime.date(2020, 1, 1)] == 31 and c["g"] == [("k", 1), ("j", 2)]


def _manifest_text(members: int) -> bytes:
    """A manifest as the writer lays it out, for ``members`` GCM-encrypted artifacts (13 props: the most there is)."""
    props = {"artifact_type": "File", "content_callback": "BinaryContentCallback", "description": "exported graph",
             "encryption": "aes-256-gcm", "kdf": "scrypt", "kdf_n": 65536, "kdf_r": 8, "kdf_p": 1, "salt": "ab" * 16,
             "nonce": "cd" * 12, "key_check": "ef" * 16, "sha256": "01" * 32, "size": 123456789}
    one = Manifest(artifacts={"NAME": props}).dump().decode().split("artifacts:\n", 1)[1]
    head = "metadata:\n  format_version: 3\n  obj_cls: nemo.collections.nlp.models.QAModel\nartifacts:\n"
    return (head + "".join(one.replace("NAME", f"artifact_{i:05d}.onnx") for i in range(members))).encode()


def test_manifest_of_10000_artifacts_loads():
    text = _manifest_text(10_000)
    doc = load(text)
    assert len(doc["artifacts"]) == 10_000 and doc["artifacts"]["artifact_09999.onnx"]["kdf_n"] == 65536
    nodes = 3 + 2 * 2 + 10_000 * (2 + 2 * 13)  # document mapping, metadata, artifacts
    assert nodes < yamlio.DEFAULT_LIMITS.max_nodes / 1.5


def test_15_mib_manifest_refused_early():
    text = "".join(f"- {{name: a{i:06d}, size: {i}}}\n" for i in range(500_000)).encode()
    assert len(text) > 15 * 2**20
    started = time.process_time()  # CPU time: other work on the machine does not count
    message = refused(text)
    took = time.process_time() - started
    # refused at the node cap, a fifth of the way in, rather than after building all of it
    assert message.startswith("the document has more than 500000 nodes") and "at line 100000," in message
    assert took < 10, f"refusing took {took:.1f} s of CPU"


def test_60_mib_model_config_refused_at_once():
    text = b"model:\n  labels:\n" + b"  - 1.5\n" * (60 * 2**20 // 8)
    started = time.process_time()
    assert "over the 16777216-byte limit for YAML" in refused(text)
    assert time.process_time() - started < 1


def test_loader_leaves_garbage_collection_as_it_was():
    import gc

    assert gc.isenabled()
    refused("[" * 100)
    load("a: 1")
    assert gc.isenabled()
    gc.disable()
    try:
        load("a: 1")
        assert not gc.isenabled()
    finally:
        gc.enable()


# -- through the archive reader and svc-inspect --------------------------------------------------------------------

@pytest.fixture()
def plain(tmp_path):
    with EffWriter(tmp_path / "plain.riva") as w:
        w.add_bytes("model_config.yaml", b"a: 1\n", {"description": "config"})
        w.add_bytes("notes.txt", b"hello", {"description": "notes"})
        w.commit({"format_version": 3, "obj_cls": "nemo.collections.nlp.models.QAModel"})
    return tmp_path / "plain.riva"


def _with_manifest(src, dst, text: bytes):
    return rewrite_tar(src, dst, lambda ms: [(i, text if i.name.endswith("manifest.yaml") else d) for i, d in ms])


def _manifest_of(path) -> str:
    with EffReader(path) as r:
        return Manifest(metadata=r.metadata, artifacts=r.artifacts).dump().decode()


@pytest.mark.parametrize("inject", ["deep: " + "[" * 1000 + "]" * 1000, "big: " + "7" * 100_000,
                                    "alias: &a [1]", "bad_day: 2024-02-30"])
def test_hostile_manifest_is_exit_3(runner, tmp_path, plain, inject):
    text = _manifest_of(plain).replace("metadata:\n", f"metadata:\n  {inject}\n", 1).encode()
    bad = _with_manifest(plain, tmp_path / "bad.riva", text)
    with pytest.raises(ArchiveError) as err:
        EffReader(bad)
    assert "manifest.yaml is not valid YAML" in str(err.value) and "at line 2" in str(err.value)
    code, out = run(runner, [str(bad), "--json"])
    assert code == 3 and "error:" in out and "internal error" not in out and "Traceback" not in out
    assert len(out) < 1000


def test_inspect_json_is_strict_for_yaml_types(runner, tmp_path, plain):
    weird = {"day": datetime.date(2024, 5, 6), "stamp": datetime.datetime(2024, 5, 6, 7, 8, 9),
             "blob": b"\x00\xffhi", "tags": {"b", "a", "c"}, "nums": {10, 9, 2.5}, "nan": math.nan, "inf": math.inf,
             "ninf": -math.inf, datetime.date(2020, 1, 1): "date key", 7: "int key", True: "bool key",
             None: "null key", 1.5: "float key", "nested": [{"when": datetime.date(1999, 12, 31)}, (1, b"x")]}
    edited = edit_manifest(plain, tmp_path / "weird.riva", lambda m: m["metadata"].update(weird)
                           or m["artifacts"]["notes.txt"].update({"written": datetime.date(2023, 1, 2)}))
    # raw YAML only the loader can give: a timezone, !!omap, a non-finite float as a key
    text = _manifest_of(edited).replace("metadata:\n", "metadata:\n  zoned: 2001-12-14t21:59:43.10-05:00\n"
                                        "  pairs: !!omap [{k: 1}, {j: 2}]\n  .nan: nan key\n", 1).encode()
    archive = _with_manifest(edited, tmp_path / "raw.riva", text)
    code, out = run(runner, [str(archive), "--json"])
    assert code == 0, out
    doc = json.loads(out, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    md = doc["metadata"]
    assert md["day"] == "2024-05-06" and md["stamp"] == "2024-05-06T07:08:09"
    assert md["zoned"] == "2001-12-14T21:59:43.100000-05:00"
    assert md["blob"] == base64.b64encode(b"\x00\xffhi").decode() and base64.b64decode(md["blob"]) == b"\x00\xffhi"
    assert md["tags"] == ["a", "b", "c"] and md["nums"] == [2.5, 9, 10]
    assert (md["nan"], md["inf"], md["ninf"]) == ("NaN", "Infinity", "-Infinity")
    assert md["2020-01-01"] == "date key" and md["7"] == "int key" and md["true"] == "bool key"
    assert md["null"] == "null key" and md["1.5"] == "float key" and md["NaN"] == "nan key"
    assert md["nested"] == [{"when": "1999-12-31"}, [1, "eA=="]] and md["pairs"] == [["k", 1], ["j", 2]]
    notes = next(a for a in doc["artifacts"] if a["name"] == "notes.txt")
    assert notes["props"]["written"] == "2023-01-02"
    code, out = run(runner, [str(archive)])  # the table still prints
    assert code == 0 and "2024-05-06" in out


def test_jsonable_rules():
    assert jsonable({b"\x01": [datetime.time(1, 2, 3), bytearray(b"\x02")]}) == {"AQ==": ["01:02:03", "Ag=="]}
    assert jsonable({None, "a", 3, False}) == [None, False, 3, "a"]
    assert json.dumps(jsonable([math.nan, -math.inf]), allow_nan=False) == '["NaN", "-Infinity"]'


# -- keys ----------------------------------------------------------------------------------------------------------

@pytest.fixture()
def gcm(tmp_path):
    with EffWriter(tmp_path / "gcm.riva", key=Secret("right")) as w:
        w.add_bytes("big.bin", b"\x01" * 200_000)
        w.add_bytes("model_config.yaml", b"a: 1\n")
        w.commit({"format_version": 3, "obj_cls": "nemo.collections.nlp.models.QAModel"})
    return tmp_path / "gcm.riva"


@pytest.fixture()
def legacy(tmp_path, salt):
    with EffWriter(tmp_path / "legacy.riva", key=Secret("tlt_encode"), legacy=(CIPHER_ID, salt)) as w:
        w.add_bytes("model_config.yaml", b"a: 1\n")
        w.commit({"format_version": 3, "obj_cls": "nemo.collections.nlp.models.QAModel"})
    return tmp_path / "legacy.riva"


@pytest.mark.parametrize("as_json", [False, True])
def test_wrong_key_is_exit_4(runner, gcm, as_json):
    code, out = run(runner, [f"{gcm}:hunter2"] + (["--json"] if as_json else []))
    assert code == 4, out
    assert "error:" in out and "wrong key for artifact" in out and "hint:" in out and "hunter2" not in out
    assert not out.lstrip().startswith("{")


def test_right_key_and_no_key_still_list(runner, gcm):
    code, out = run(runner, [f"{gcm}:right", "--json"])
    assert code == 0 and [a["encrypted"] for a in json.loads(out)["artifacts"]] == [True, True]
    code, out = run(runner, [str(gcm), "--json"])
    assert code == 0 and len(json.loads(out)["artifacts"]) == 2
    code, out = run(runner, [f"{gcm}:right"])
    assert code == 0 and "gcm.riva: EFF export" in out


def test_legacy_key_checked_by_sha256(runner, legacy, salts_file):
    code, out = run(runner, [f"{legacy}:wrong", "--eff-salts", str(salts_file)])
    assert code == 4 and "wrong key for artifact 'model_config.yaml'" in out and "'wrong'" not in out
    code, out = run(runner, [f"{legacy}:tlt_encode", "--eff-salts", str(salts_file), "--json"])
    assert code == 0 and json.loads(out)["artifacts"][0]["encrypted"] is True
    code, out = run(runner, [f"{legacy}:tlt_encode"])  # the key cannot be checked without the salt: say so
    assert code == 4 and "salt is not known" in out and "--eff-salts" in out


def test_key_on_plain_archive_is_fine(runner, plain):
    code, out = run(runner, [f"{plain}:whatever", "--json"])
    assert code == 0 and json.loads(out)["kind"] == "export"


# -- bounded messages ----------------------------------------------------------------------------------------------

def test_messages_and_hints_are_bounded():
    err = ArchiveError("v" * 2**21 + "END", hint="h" * 10_000)
    assert len(err.message) <= MAX_MESSAGE_CHARS and len(str(err)) <= MAX_MESSAGE_CHARS
    assert len(err.args[0]) <= MAX_MESSAGE_CHARS and len(err.hint) <= MAX_MESSAGE_CHARS
    assert err.message.startswith("vvv") and err.message.endswith("vEND")
    omitted = int(err.message.split("… (")[1].split(" characters omitted")[0])
    assert omitted == 2**21 + 3 - (len(err.message) - len(f"… ({omitted} characters omitted) …"))
    assert ArchiveError("short", hint="fix it").message == "short" and bounded("x" * 12, 10) == "x" * 12


def test_validation_errors_bound_each_violation_and_their_number():
    err = ValidationError("bad inputs", ["w" * 100_000] + [f"v{i}" for i in range(200)])
    lines = err.message.splitlines()
    assert lines[0] == "bad inputs" and max(map(len, lines)) <= MAX_MESSAGE_CHARS + 4
    assert lines[-1] == "  ... and 151 more" and len(err.violations) == 201


def test_cli_prints_a_bounded_message(capsys):
    import typer

    from servicemaker.cli.common import reported_errors

    with pytest.raises(typer.Exit) as exited:
        with reported_errors(debug=False):
            raise ArchiveError("manifest field is " + "y" * 2**21, hint="drop " + "z" * 2**21)
    out = capsys.readouterr()
    assert exited.value.exit_code == 3 and "characters omitted" in out.err
    assert out.err.startswith("error: manifest field is yyy") and "hint: drop zzz" in out.err
    assert len(out.err) < 2 * MAX_MESSAGE_CHARS + 100
