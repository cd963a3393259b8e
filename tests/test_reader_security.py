"""The archive reader is a security boundary: every rejection, with its exact message."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from servicemaker.eff import EffReader, Limits
from servicemaker.eff import onnx_tar
from servicemaker.errors import ArchiveError, NotFoundError, UnsafeArchiveError

MANIFEST = b"metadata: {format_version: 3, obj_cls: a.B}\nartifacts: {x.txt: {encryption: false}}\n"


def tar_bytes(members: list[tuple]) -> bytes:
    """An uncompressed tar. members: (name, data) regular files, or (name, TarInfo-type, linkname) specials."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for m in members:
            info = tarfile.TarInfo(m[0])
            if len(m) == 2:
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
            else:
                info.type, info.linkname = m[1], m[2]
                tf.addfile(info)
    return buf.getvalue()


def make(path: Path, members: list[tuple]) -> Path:
    path.write_bytes(gzip.compress(tar_bytes(members)))
    return path


def good(extra=()):
    return [("manifest.yaml", MANIFEST), ("artifacts/x.txt", b"hi"), *extra]


def rejects(path: Path, message: str, exc=UnsafeArchiveError, limits: Limits | None = None) -> None:
    with pytest.raises(exc) as err:
        EffReader(path, limits=limits or Limits())
    assert str(err.value) == message


def test_good_archive_opens(tmp_path):
    with EffReader(make(tmp_path / "a.riva", good())) as r:
        assert r.read_bytes("x.txt") == b"hi"
        assert r.layout == "registry"


@pytest.mark.parametrize("name,reason", [
    ("/etc/passwd", "has an absolute path"),
    ("../evil", "has a '..' path component"),
    ("artifacts/../../evil", "has a '..' path component"),
])
def test_path_traversal(tmp_path, name, reason):
    p = make(tmp_path / "a.riva", good([(name, b"x")]))
    rejects(p, f"{p}: member '{name}' {reason}")


@pytest.mark.parametrize("kind,label", [(tarfile.SYMTYPE, "link"), (tarfile.LNKTYPE, "link")])
def test_links(tmp_path, kind, label):
    p = make(tmp_path / "a.riva", good([("artifacts/y", kind, "/etc/passwd")]))
    rejects(p, f"{p}: member 'artifacts/y' is a link (to '/etc/passwd'); links are not allowed")


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_devices(tmp_path, kind):
    p = make(tmp_path / "a.riva", good([("artifacts/dev", kind, "")]))
    rejects(p, f"{p}: member 'artifacts/dev' is a device or FIFO; only regular files are allowed")


def test_duplicate_member(tmp_path):
    p = make(tmp_path / "a.riva", good([("artifacts/x.txt", b"again")]))
    rejects(p, f"{p}: member 'artifacts/x.txt' appears more than once")


def test_duplicate_after_normalization(tmp_path):
    p = make(tmp_path / "a.riva", good([("./artifacts/x.txt", b"again")]))
    rejects(p, f"{p}: member 'artifacts/x.txt' appears more than once")


def test_stored_twice_root_and_registry(tmp_path):
    p = make(tmp_path / "a.riva", good([("x.txt", b"root copy")]))
    rejects(p, f"{p}: artifact 'x.txt' is stored twice (at the root and in artifacts/)")


def test_member_not_in_manifest(tmp_path):
    p = make(tmp_path / "a.riva", good([("artifacts/payload.sh", b"rm -rf /")]))
    rejects(p, f"{p}: member 'artifacts/payload.sh' is not listed in manifest.yaml")


def test_manifest_artifact_missing(tmp_path):
    p = make(tmp_path / "a.riva", [("manifest.yaml", MANIFEST)])
    rejects(p, f"{p}: manifest.yaml lists artifact 'x.txt' but the archive has no member artifacts/x.txt",
            exc=ArchiveError)


def test_manifest_over_cap(tmp_path):
    p = make(tmp_path / "a.riva", good())
    rejects(p, f"{p}: manifest.yaml is {len(MANIFEST)} bytes, over the 10-byte limit",
            limits=Limits(max_manifest_bytes=10))


def test_member_over_cap(tmp_path):
    p = make(tmp_path / "a.riva", good())
    rejects(p, f"{p}: member 'manifest.yaml' is {len(MANIFEST)} bytes, over the 20-byte limit per member",
            limits=Limits(max_member_bytes=20))


def test_total_over_cap(tmp_path):
    p = make(tmp_path / "a.riva", good())
    rejects(p, f"{p}: members add up to more than the 50-byte limit for an archive",
            limits=Limits(max_total_bytes=50))


def test_too_many_members(tmp_path):
    p = make(tmp_path / "a.riva", good([(f"d{i}", tarfile.DIRTYPE, "") for i in range(5)]))
    rejects(p, f"{p}: more than 4 members", limits=Limits(max_members=4))


def test_decompression_bomb(tmp_path):
    p = make(tmp_path / "a.riva", good([("artifacts/zeros", bytes(8 << 20))]))
    ratio = (len(MANIFEST) + 2 + (8 << 20)) / p.stat().st_size
    rejects(p, f"{p}: expands {ratio:.0f}x (limit 100x): refusing a likely decompression bomb",
            limits=Limits(max_compression_ratio=100, ratio_floor_bytes=1 << 20))


def test_not_gzip(tmp_path):
    p = tmp_path / "a.riva"
    p.write_bytes(b"this is not an archive")
    with pytest.raises(ArchiveError) as err:
        EffReader(p)
    assert str(err.value).startswith(f"{p}: not an EFF archive (not a gzip-compressed tar")


def test_truncated(tmp_path):
    full = make(tmp_path / "full.riva", good([("artifacts/big", bytes(range(256)) * 4000)])).read_bytes()
    p = tmp_path / "a.riva"
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(ArchiveError) as err:
        EffReader(p)
    assert "truncated" in str(err.value) or "corrupt" in str(err.value)


def test_yaml_alias_bomb(tmp_path):
    bomb = b"a: &a [x, x]\nb: &b [*a, *a]\nmetadata: {}\nartifacts: {}\n"
    p = make(tmp_path / "a.riva", [("manifest.yaml", bomb)])
    with pytest.raises(ArchiveError) as err:
        EffReader(p)
    assert str(err.value) == f"{p}: manifest.yaml is not valid YAML: YAML anchors are not allowed at line 1, column 4"


@pytest.mark.parametrize("name", ["../x", "a/b", ".", ""])
def test_bad_artifact_names(tmp_path, name):
    manifest = f"metadata: {{}}\nartifacts: {{'{name}': {{}}}}\n".encode()
    p = make(tmp_path / "a.riva", [("manifest.yaml", manifest)])
    with pytest.raises(ArchiveError, match="is not allowed"):
        EffReader(p)


def test_no_manifest_nemo_checkpoint(tmp_path):
    p = make(tmp_path / "m.nemo", [("model_config.yaml", b"a: 1"), ("model_weights.ckpt", b"w")])
    with pytest.raises(ArchiveError) as err:
        EffReader(p)
    assert str(err.value) == f"{p}: no manifest.yaml at the archive root: not an EFF archive"
    assert err.value.hint == "this looks like a .nemo checkpoint; export it with nemo2riva first"


def test_missing_file(tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        EffReader(tmp_path / "nope.riva")


def test_corrupt_plain_artifact_detected_by_sha(tmp_path):
    manifest = b"metadata: {}\nartifacts: {x.txt: {encryption: false, sha256: " + b"0" * 64 + b"}}\n"
    p = make(tmp_path / "a.riva", [("manifest.yaml", manifest), ("artifacts/x.txt", b"hi")])
    with EffReader(p) as r, pytest.raises(ArchiveError) as err:
        r.read_bytes("x.txt")
    assert str(err.value) == f"{p}: artifact 'x.txt' is corrupt (sha256 does not match the manifest)"


def test_unknown_encryption(tmp_path):
    manifest = b"metadata: {}\nartifacts: {x.txt: {encryption: rot13}}\n"
    p = make(tmp_path / "a.riva", [("manifest.yaml", manifest), ("artifacts/x.txt", b"hi")])
    with pytest.raises(ArchiveError) as err:
        EffReader(p)
    assert str(err.value) == f"{p}: artifact 'x.txt' uses unknown encryption 'rot13'"


def test_hostile_kdf_cost_refused(tmp_path):
    manifest = (b"metadata: {}\nartifacts: {x.txt: {encryption: aes-256-gcm, kdf: scrypt, kdf_n: 1073741824, "
                b"kdf_r: 8, kdf_p: 1, salt: '" + b"00" * 16 + b"', nonce: '" + b"00" * 12 + b"', key_check: '"
                + b"0" * 32 + b"'}}\n")
    p = make(tmp_path / "a.riva", [("manifest.yaml", manifest), ("artifacts/x.txt", b"hi" * 20)])
    with pytest.raises(ArchiveError, match="beyond the accepted maximum"):
        EffReader(p)


def test_extract_stays_inside(tmp_path):
    with EffReader(make(tmp_path / "a.riva", good())) as r:
        out = r.extract("x.txt", tmp_path / "dest" if (tmp_path / "dest").mkdir() is None else None)
        assert out == (tmp_path / "dest" / "x.txt").resolve()
        with pytest.raises(UnsafeArchiveError, match="outside"):
            r.extract("x.txt", tmp_path / "dest", as_name="../escape.txt")
    assert not (tmp_path / "escape.txt").exists()


# -- .onnx.tar -----------------------------------------------------------------------------------------------------------

def _inner(members) -> io.BytesIO:
    return io.BytesIO(tar_bytes(members))


def test_onnx_tar_scan_and_extract(tmp_path):
    sizes = onnx_tar.scan(_inner([("weights/w.bin", b"1234"), ("m.onnx", b"graph")]), "t")
    assert list(sizes) == ["m.onnx", "weights/w.bin"]
    graph = onnx_tar.extract(_inner([("m.onnx", b"graph"), ("weights/w.bin", b"1234")]), tmp_path / "x", "t")
    assert graph.read_bytes() == b"graph" and (tmp_path / "x/weights/w.bin").read_bytes() == b"1234"


@pytest.mark.parametrize("members,message", [
    ([("m.onnx", b"g"), ("../w.bin", b"x")], "t: member '../w.bin' has a '..' path component"),
    ([("m.onnx", b"g"), ("w.bin", tarfile.SYMTYPE, "/etc/passwd")],
     "t: member 'w.bin' is a link (to '/etc/passwd'); links are not allowed"),
    ([("a.onnx", b"g"), ("b.onnx", b"g")], "t: must hold exactly one .onnx graph at its root, found 2"),
    ([("w.bin", b"g")], "t: must hold exactly one .onnx graph at its root, found 0"),
])
def test_onnx_tar_rejections(tmp_path, members, message):
    with pytest.raises(ArchiveError) as err:
        onnx_tar.extract(_inner(members), tmp_path / "x", "t")
    assert str(err.value) == message
    assert not (tmp_path / "w.bin").exists()


def test_onnx_tar_pack_round_trip(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    src = tmp_path / "src"
    src.mkdir()
    onnx.save(helper.make_model(graph), src / "model.onnx", save_as_external_data=True, location="model.data",
              size_threshold=0)
    packed = onnx_tar.pack(src / "model.onnx", tmp_path / "model.onnx.tar")
    with open(packed, "rb") as fh:
        out = onnx_tar.extract(fh, tmp_path / "out", "t")
    loaded = onnx.load(str(out))
    assert np.array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), numpy_helper.to_array(w))
