"""What the archive fuzzer found (benchmarks/fuzz_archives.py, tests/test_fuzz.py), one test per finding.

Each test writes the failing archive deterministically (a small valid seed from tests/fuzz_seeds.py, changed the
way the fuzzer changed it) and asserts the behaviour wanted: a typed error (exit code 2-9) with a one-line message,
no traceback, and for svc-build a ``ServiceMakerError``. A new finding gets its test here, fixed in the same change.
"""

from __future__ import annotations

import json
import tarfile
import time

import pytest
import yaml
from typer.testing import CliRunner

from servicemaker.build import BuildOptions, build
from servicemaker.cli.inspect import app as inspect_app
from servicemaker.errors import ServiceMakerError
from servicemaker.keys import ArchiveArg, Secret

from fuzz_seeds import CIPHER_ID, KEY, SALT, Member, gzip_bytes, salt_table, tiny_export
from fuzz_strategies import fix_checksum, header_offsets, tar_from

TC = "TextClassificationModel"


def seed_members(tmp_path, **kw) -> list[Member]:
    path = tiny_export(tmp_path / "seed.riva", TC, **kw)
    with tarfile.open(path) as tf:
        return [Member(i.name, tf.extractfile(i).read()) for i in tf.getmembers()]


def write(tmp_path, members: list[Member], name: str = "case.riva") -> object:
    path = tmp_path / name
    path.write_bytes(gzip_bytes(tar_from(members, tarfile.GNU_FORMAT)))
    return path


def with_manifest(tmp_path, change, **kw):
    """The seed export with ``change(manifest bytes) -> bytes`` applied to its manifest.yaml."""
    members = seed_members(tmp_path, **kw)
    for m in members:
        if m.name == "manifest.yaml":
            m.data = change(m.data)
    return write(tmp_path, members)


def inspect(path, key: str | None = None):
    args = [f"{path}:{key}" if key else str(path), "--json", "--verify"]
    if key:
        salts = path.parent / "salts.yaml"
        salts.write_text(f"{CIPHER_ID}: {SALT.hex()}\n")
        args += ["--eff-salts", str(salts)]
    return CliRunner().invoke(inspect_app, args)


def assert_refused(result, code: int, *fragments: str) -> str:
    """A typed refusal: the exit code, 'error: <one line>' (then only hint lines), no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    lines = result.stderr.rstrip("\n").splitlines()
    assert lines and lines[0].startswith("error: "), result.output
    assert all(line.startswith(("hint: ", "  - ")) for line in lines[1:]), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == "", "nothing on stdout when the archive is refused"
    return lines[0]


def build_error(tmp_path, path, key: str | None = None) -> ServiceMakerError:
    out = tmp_path / "out.rmir"
    with pytest.raises(ServiceMakerError) as err:
        build(BuildOptions(pipeline="text_classification", output=ArchiveArg(out, None),
                           inputs=[ArchiveArg(path, Secret(key) if key else None)], salts=salt_table()))
    assert 2 <= err.value.exit_code <= 9
    assert "\n" not in err.value.message.split("\n  - ")[0]
    assert not out.exists()
    return err.value


# --- fixed ------------------------------------------------------------------------------------------------------------

def test_negative_member_size_is_a_corrupt_archive(tmp_path):
    """Found against the reader before its rewrite: a GNU base-256 negative size (0xff ...) in a member header
    made gzip's seek raise an uncaught ValueError (exit 1, 'internal error')."""
    members = seed_members(tmp_path)
    tar = bytearray(tar_from(members, tarfile.GNU_FORMAT))
    off = header_offsets(bytes(tar))[1]
    tar[off + 124:off + 136] = b"\xff" + bytes(11)
    fix_checksum(tar, off)
    path = tmp_path / "case.riva"
    path.write_bytes(gzip_bytes(bytes(tar)))
    assert_refused(inspect(path), 3, str(path))
    assert build_error(tmp_path, path).exit_code == 3


# --- open findings ----------------------------------------------------------------------------------------------------

TAGGED = ["x: !!timestamp nope", "x: !!bool maybe", "x: !!int ''", "x: !!float ''", "x: !!int '+'"]


@pytest.mark.parametrize("line", TAGGED)
def test_tagged_scalar_that_does_not_parse_in_the_manifest(tmp_path, line):
    path = with_manifest(tmp_path, lambda text: text + line.encode() + b"\n")
    assert_refused(inspect(path), 3, "manifest.yaml", "not valid YAML")
    assert build_error(tmp_path, path).exit_code == 3


def test_tagged_scalar_that_does_not_parse_in_the_model_config(tmp_path):
    members = seed_members(tmp_path)
    for m in members:
        if m.name.endswith("model_config.yaml"):
            m.data += b"x: !!timestamp nope\n"
    err = build_error(tmp_path, write(tmp_path, members))
    assert err.exit_code in (3, 5) and "model_config.yaml" in str(err)


def test_min_nemo_version_of_5000_digits(tmp_path):
    path = with_manifest(tmp_path, lambda t: t.replace(b"min_nemo_version: '1.3'", b"min_nemo_version: '"
                                                       + b"1" * 5000 + b"'"))
    err = build_error(tmp_path, path)
    assert err.exit_code == 5 and "min_nemo_version" in str(err)
    assert len(str(err)) < 1000, "the message must not echo the 5000 digits"


@pytest.mark.parametrize("value", ["[/]", "[bold]x[/bold]"])
def test_markup_in_an_error_message_is_printed_as_is(tmp_path, value):
    path = with_manifest(tmp_path, lambda t: t.replace(b"encryption: false", f"encryption: '{value}'".encode(), 1))
    assert_refused(inspect(path), 3, f"uses unknown encryption '{value}'")


def test_manifest_of_a_million_keys_is_refused_at_once(tmp_path):
    big = b"x: {" + b",".join(b"k%d: 0" % i for i in range(1_000_010)) + b"}\n"
    path = with_manifest(tmp_path, lambda t: t + big)
    started = time.process_time()  # CPU time of this process: the refusal's cost, not the machine's load
    result = inspect(path)
    seconds = time.process_time() - started
    assert_refused(result, 3, "manifest.yaml")
    assert seconds < 0.5, f"took {seconds:.2f} s"  # the node budget of a small archive is 20,000 + 40 per member


def test_encryption_props_stripped_from_one_artifact_of_an_encrypted_rmir_style_archive(tmp_path):
    """Finding ('downgrade' in the fuzzer): a manifest edit that strips one artifact's codec props made the reader
    take its ciphertext as plain content. servicemaker's own (aes-256-gcm) archives encrypt every artifact, so a
    plaintext artifact among gcm ones is refused. Legacy EFF manifests are not authenticated and nemo2riva mixes
    plain and encrypted artifacts legitimately: docs/archive-format.md says what that leaves open."""
    def strip(text: bytes) -> bytes:
        out, inside = [], False
        for line in text.split(b"\n"):
            if line.startswith(b"  ") and not line.startswith(b"   "):
                inside = line == b"  model_config.yaml:"
            if not (inside and line.startswith(b"    ") and not line.startswith((b"    size:", b"    description:"))):
                out.append(line)
        return b"\n".join(out)

    path = with_manifest(tmp_path, strip, key=KEY)
    with tarfile.open(path) as tf:
        manifest = tf.extractfile("manifest.yaml").read()
    assert b"model_config.yaml" in manifest and manifest.count(b"encryption: aes-256-gcm") >= 3
    assert_refused(inspect(path, KEY), 3, "model_config.yaml", "plaintext")


def edit_doc(tmp_path, src, change, fmt: int, name: str):
    """``src`` with ``change(manifest dict)`` applied (PyYAML writes bytes as ``!!binary``)."""
    with tarfile.open(src) as tf:
        members = [Member(i.name, tf.extractfile(i).read()) for i in tf.getmembers()]
    for m in members:
        if m.name == "manifest.yaml":
            doc = yaml.safe_load(m.data)
            change(doc)
            m.data = yaml.safe_dump(doc, sort_keys=False).encode()
    path = tmp_path / name
    path.write_bytes(gzip_bytes(tar_from(members, fmt)))
    return path


@pytest.mark.parametrize("key", ["runtime", "format_version"])
def test_binary_metadata_value_of_an_export(tmp_path, key):
    src = tiny_export(tmp_path / "seed.riva", TC)
    path = edit_doc(tmp_path, src, lambda d: d["metadata"].__setitem__(key, b"\xccM\xa5$rj]"), tarfile.GNU_FORMAT,
                    "case.riva")
    assert build_error(tmp_path, path).exit_code in (3, 5)


def test_binary_value_in_the_pipeline_spec_of_an_rmir(tmp_path):
    src = tiny_export(tmp_path / "seed.riva", TC)
    rmir = tmp_path / "seed.rmir"
    build(BuildOptions(pipeline="text_classification", output=ArchiveArg(rmir, None), inputs=[ArchiveArg(src, None)]))

    def change(doc):
        doc["metadata"]["pipeline_spec"]["inputs"][0]["metadata"]["min_nemo_version"] = b"\xfbUe2"

    path = edit_doc(tmp_path, rmir, change, tarfile.PAX_FORMAT, "case.rmir")
    assert_refused(inspect(path), 5, "pipeline spec")


def test_helpers_build_what_they_say(tmp_path):
    """The seed these tests change is accepted as it is (so each failure above is the change's doing)."""
    path = write(tmp_path, seed_members(tmp_path))
    result = inspect(path)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["verified"] is True


def test_graph_output_name_with_control_characters(tmp_path):
    """Finding: a byte changed inside a graph output's name put raw protobuf bytes (newlines) into svc-build's
    message; such names are refused and quoted bounded."""
    from onnx import TensorProto, helper

    from servicemaker.errors import ValidationError
    from servicemaker.onnx_scan import scan_stream
    import io

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 2])
    y = helper.make_tensor_value_info("y\n\x08z", TensorProto.FLOAT, ["b", 2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y\n\x08z"])], "g", [x], [y])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    with pytest.raises(ValidationError) as err:
        scan_stream(io.BytesIO(data), "in.riva: g.onnx", len(data))
    text = str(err.value)
    assert "control characters" in text and "'y\\n\\x08z'" in text and "\n\x08" not in text
