"""Reader hardening: gzip trailers, bombs refused while inflating, bounded random access, scrypt budget, null props,
keyed digests, bounded messages. Each hostile archive must give one typed error, quickly."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import time

import pytest

from servicemaker.eff import EffReader, EffWriter, KeyRing, Limits
from servicemaker.eff import onnx_tar
from servicemaker.eff.codecs import GcmKeys, _GcmEncoder, digest_of
from servicemaker.eff.gzstream import BLOCK, InflatedStream
from servicemaker.errors import ArchiveError, UnsafeArchiveError, WrongKeyError
from servicemaker.keys import Secret

MANIFEST = b"metadata: {format_version: 3, obj_cls: a.B}\nartifacts: {x.bin: {encryption: false}}\n"
PAYLOAD = bytes(range(256)) * 512  # 128 KiB


def tar_of(members: list[tuple[str, bytes]], fmt=tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def good_tar(manifest: bytes = MANIFEST, payload: bytes = PAYLOAD) -> bytes:
    return tar_of([("manifest.yaml", manifest), ("artifacts/x.bin", payload)])


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def refused(path, exc=ArchiveError, **kw) -> ArchiveError:
    with pytest.raises(exc) as err:
        EffReader(path, **kw).close()
    return err.value


# -- 1. the gzip trailer -------------------------------------------------------------------------------------------

def test_bit_flip_in_stored_deflate_data_fails_the_crc(tmp_path):
    """Level 0 stores the tar verbatim inside deflate: a flipped bit changes the member's bytes and nothing else."""
    raw = bytearray(gzip.compress(good_tar(), compresslevel=0, mtime=0))
    at = raw.index(PAYLOAD[1000:1100]) + 50
    raw[at] ^= 0x10
    err = refused(write(tmp_path / "a.riva", bytes(raw)))
    assert str(err) == f"{tmp_path / 'a.riva'}: the gzip CRC32 check failed: the archive is corrupt"
    assert "compare its size/sha256" in err.hint


def test_bit_flips_in_compressed_data_never_pass_unnoticed(tmp_path):
    """A flip in real deflate data is refused (CRC, or a broken stream), or leaves the content unchanged."""
    payload = os.urandom(4096) + PAYLOAD
    raw = gzip.compress(good_tar(payload=payload), mtime=0)
    refusals = 0
    for i, at in enumerate(range(30, len(raw) - 8, max(1, (len(raw) - 40) // 25))):
        bad = bytearray(raw)
        bad[at] ^= 1 << (i % 8)
        path = write(tmp_path / f"f{i}.riva", bytes(bad))
        try:
            with EffReader(path) as r:
                data = r.read_bytes("x.bin")
        except ArchiveError:
            refusals += 1
            continue
        assert data == payload
    assert refusals >= 20


def test_size_trailer_checked(tmp_path):
    raw = bytearray(gzip.compress(good_tar(), mtime=0))
    raw[-1] ^= 1  # ISIZE
    assert "size check (ISIZE) failed" in str(refused(write(tmp_path / "a.riva", bytes(raw))))
    raw = bytearray(gzip.compress(good_tar(), mtime=0))
    raw[-6] ^= 1  # CRC32
    assert "CRC32 check failed" in str(refused(write(tmp_path / "b.riva", bytes(raw))))


@pytest.mark.parametrize("cut", [4, 8, 1000])
def test_truncated_stream(tmp_path, cut):
    raw = gzip.compress(good_tar(payload=os.urandom(20000)), mtime=0)
    p = write(tmp_path / "a.riva", raw[:-cut])
    assert str(refused(p)) == f"{p}: truncated: the gzip stream ends before its end marker"


def test_trailing_garbage_refused_nul_padding_accepted(tmp_path):
    raw = gzip.compress(good_tar(), mtime=0)
    p = write(tmp_path / "a.riva", raw + b"hello")
    assert str(refused(p)) == f"{p}: 5 bytes of trailing data after the end of the gzip stream (at offset {len(raw)})"
    p = write(tmp_path / "b.riva", raw + bytes(100) + b"x")
    assert str(refused(p)) == f"{p}: trailing data after the end of the gzip stream (at offset {len(raw) + 100})"
    with EffReader(write(tmp_path / "c.riva", raw + bytes(512))) as r:
        assert r.read_bytes("x.bin") == PAYLOAD


def test_concatenated_gzip_members_read(tmp_path):
    tar = good_tar()
    p = write(tmp_path / "a.riva", b"".join(gzip.compress(tar[i:i + 7000], mtime=0) for i in range(0, len(tar), 7000)))
    with EffReader(p) as r:
        assert r.read_bytes("x.bin") == PAYLOAD


def test_data_after_tar_end_marker_refused(tmp_path):
    p = write(tmp_path / "a.riva", gzip.compress(good_tar() + tar_of([("artifacts/hidden", b"x")]), mtime=0))
    err = refused(p, UnsafeArchiveError)
    assert str(err).startswith(f"{p}: data after the tar end-of-archive marker")


def test_invalid_header_is_not_taken_as_the_end(tmp_path):
    tar = bytearray(good_tar())
    second = tar.index(b"artifacts/x.bin")
    tar[second + 148: second + 156] = b"garbage!"  # the header checksum
    p = write(tmp_path / "a.riva", gzip.compress(bytes(tar), mtime=0))
    assert "the tar stream is corrupt at offset" in str(refused(p))


def test_file_changed_while_open_is_refused(tmp_path):
    raw = gzip.compress(good_tar(payload=PAYLOAD * 4), compresslevel=0, mtime=0)
    p = write(tmp_path / "a.riva", raw)
    with EffReader(p) as r:
        at = 300_000  # inside the payload, in a block that is inflated again (stored blocks: offsets ~ match)
        with open(p, "r+b") as fh:
            fh.seek(at)
            fh.write(bytes([raw[at] ^ 1]))
        with pytest.raises(ArchiveError) as err:
            r.read_bytes("x.bin")
    assert str(err.value) == f"{p}: the file changed while it was being read"


# -- 2. bombs ------------------------------------------------------------------------------------------------------

def _zero_members(f, mib: int) -> None:
    chunk = gzip.compress(bytes(1 << 20), mtime=0)
    for _ in range(mib):
        f.write(chunk)


def test_16_gib_bomb_refused_fast(tmp_path):
    """A 17 MB file of 16 GiB of zeros under one tar header: refused as the header is read."""
    manifest = b"metadata: {}\nartifacts: {zeros: {encryption: false}}\n"
    head = tarfile.TarInfo("manifest.yaml")
    head.size = len(manifest)
    info = tarfile.TarInfo("artifacts/zeros")
    info.size = 16 << 30
    headers = head.tobuf(tarfile.GNU_FORMAT) + manifest + bytes(-len(manifest) % 512) + info.tobuf(tarfile.GNU_FORMAT)
    p = tmp_path / "bomb.riva"
    with open(p, "wb") as f:
        f.write(gzip.compress(headers, mtime=0))
        _zero_members(f, 16 * 1024)
    assert 16e6 < p.stat().st_size < 18e6
    t0 = time.perf_counter()
    err = refused(p, UnsafeArchiveError)
    elapsed = time.perf_counter() - t0
    assert "refusing a likely decompression bomb" in str(err)
    assert elapsed < 5, elapsed


def test_undeclared_bomb_stops_while_inflating(tmp_path):
    """Zeros no header declares (after the tar end): the inflation counts and stops past ratio × consumed + floor."""
    p = tmp_path / "hidden.riva"
    with open(p, "wb") as f:
        f.write(gzip.compress(good_tar(), mtime=0))
        _zero_members(f, 512)
    limits = Limits(ratio_floor_bytes=4 << 20)
    with open(p, "rb") as fh:
        stream = InflatedStream(fh, "hidden", limits)
        with pytest.raises(UnsafeArchiveError) as err:
            while stream.read(1 << 20):
                pass
    assert "refusing a likely decompression bomb" in str(err.value)
    assert stream.inflated < 8 << 20  # stopped after ~5 MiB, not 512 MiB
    t0 = time.perf_counter()
    refused(p, UnsafeArchiveError, limits=limits)
    assert time.perf_counter() - t0 < 5


def test_total_cap_while_inflating(tmp_path):
    """Bytes no header declares (NUL padding after the end marker) still count against the total."""
    p = write(tmp_path / "a.riva", gzip.compress(good_tar() + bytes(1 << 20), mtime=0))
    err = refused(p, UnsafeArchiveError, limits=Limits(max_total_bytes=200_000, max_overhead_bytes=100_000))
    assert str(err) == (f"{p}: inflates to more than 300000 bytes (the limit for an archive's members plus their "
                        "headers): refusing it")
    EffReader(p, limits=Limits(max_total_bytes=2 << 20)).close()


def test_huge_and_chained_extended_headers(tmp_path):
    big = tar_of([("manifest.yaml", MANIFEST), ("artifacts/" + "n" * 3000, b"x")], fmt=tarfile.PAX_FORMAT)
    p = write(tmp_path / "a.riva", gzip.compress(big, mtime=0))
    err = refused(p, UnsafeArchiveError, limits=Limits(max_extended_header_bytes=1024))
    assert "a tar extended header (pax or GNU long name) of 3021 bytes is over the 1024-byte limit" in str(err)

    def pax(records: bytes) -> bytes:
        info = tarfile.TarInfo("././@PaxHeader")
        info.type, info.size = tarfile.XHDTYPE, len(records)
        return info.tobuf(tarfile.USTAR_FORMAT) + records + bytes(-len(records) % 512)

    chain = b"".join(pax(b"12 foo=barr\n") for _ in range(3000)) + good_tar()
    p = write(tmp_path / "b.riva", gzip.compress(chain, mtime=0))
    assert "more than 8 tar extended headers in front of one member" in str(refused(p, UnsafeArchiveError))


def test_sparse_member_refused(tmp_path):
    tar = bytearray(good_tar())
    at = tar.index(b"artifacts/x.bin")
    tar[at + 156: at + 157] = tarfile.GNUTYPE_SPARSE
    chk = tarfile.calc_chksums(bytes(tar[at: at + 512]))[0]
    tar[at + 148: at + 156] = b"%06o\x00 " % chk
    p = write(tmp_path / "a.riva", gzip.compress(bytes(tar), mtime=0))
    assert "is a sparse file" in str(refused(p, UnsafeArchiveError))


# -- 3. bounded random access ----------------------------------------------------------------------------------------

def test_5000_members_in_reverse_order_cost_linear(tmp_path):
    names = [f"a{i:05d}.bin" for i in range(5000)]
    manifest = ("metadata: {}\nartifacts: {" + ", ".join(f"{n}: {{encryption: false}}" for n in names) + "}\n").encode()
    members = [("manifest.yaml", manifest)] + [(f"artifacts/{n}", os.urandom(1024)) for n in names]
    data = dict(members)
    p = write(tmp_path / "many.riva", gzip.compress(tar_of(members), compresslevel=1, mtime=0))
    with EffReader(p) as r:
        size = r._stream.size
        before = r.inflated_bytes
        for n in reversed(names):
            assert r.read_bytes(n) == data[f"artifacts/{n}"]
        reverse = r.inflated_bytes - before
        before = r.inflated_bytes
        for n in names[::7]:  # scattered order: one block (and at most one checkpoint gap) per read
            r.read_bytes(n)
        scattered = r.inflated_bytes - before
    # rewinding to the start for every read would inflate about size × 5000 / 2 bytes
    assert reverse < 3 * size, (reverse, size)
    assert scattered <= len(names[::7]) * 2 * BLOCK, scattered


# -- 4. scrypt budget ------------------------------------------------------------------------------------------------

def _gcm_manifest(n: int, r: int, p: int, count: int = 1, salts=None) -> bytes:
    arts = []
    salts = salts or [os.urandom(16)] * count
    for i in range(count):
        salt = salts[i].hex()
        arts.append(f"x{i}.bin: {{encryption: aes-256-gcm, kdf: scrypt, kdf_n: {n}, kdf_r: {r}, kdf_p: {p}, "
                    f"salt: '{salt}', nonce: '{'00' * 12}', key_check: '{'0' * 32}'}}")
    return ("metadata: {}\nartifacts: {" + ", ".join(arts) + "}\n").encode()


def _gcm_archive(path, n, r, p, count=1, salts=None):
    members = [("manifest.yaml", _gcm_manifest(n, r, p, count, salts))]
    members += [(f"artifacts/x{i}.bin", bytes(40)) for i in range(count)]
    return write(path, gzip.compress(tar_of(members), mtime=0))


def test_max_cost_scrypt_refused_quickly(tmp_path):
    p = _gcm_archive(tmp_path / "a.rmir", 2**20, 16, 4)
    t0 = time.perf_counter()
    with pytest.raises(ArchiveError) as err:
        with EffReader(p, KeyRing(key=Secret("k"))) as reader:
            reader.read_bytes("x0.bin")
    assert time.perf_counter() - t0 < 1
    assert str(err.value) == (f"{p}: artifact 'x0.bin' asks for scrypt cost n=1048576 r=16 p=4, beyond the accepted "
                              "maximum (budget: memory 128·r·n <= 256 MiB, work n·r·p <= 2^21, p <= 4)")


@pytest.mark.parametrize("n,r,p,ok", [(2**18, 8, 1, True), (2**16, 8, 4, True), (2**19, 8, 1, False),
                                      (2**14, 8, 5, False), (2**17, 16, 2, False), (1000, 8, 1, False),
                                      ("65536", 8, 1, False), (True, 8, 1, False)])
def test_scrypt_budget_edges(tmp_path, n, r, p, ok):
    path = _gcm_archive(tmp_path / "a.rmir", n if not isinstance(n, str) else f"'{n}'", r, p)
    if ok:
        EffReader(path).close()  # opening checks props only; no key work
    else:
        refused(path)


def test_total_kdf_work_per_archive(tmp_path):
    p = _gcm_archive(tmp_path / "a.rmir", 2**16, 8, 1, count=5, salts=[os.urandom(16) for _ in range(5)])
    err = refused(p, UnsafeArchiveError, limits=Limits(max_kdf_work=4 * 2**19))
    assert "ask for 5 scrypt key derivations of total work n·r·p = 2621440" in str(err)
    same = _gcm_archive(tmp_path / "b.rmir", 2**16, 8, 1, count=5)  # one salt: one derivation
    EffReader(same, limits=Limits(max_kdf_work=4 * 2**19)).close()


def test_writer_defaults_inside_the_budget_and_one_derivation(tmp_path):
    with EffWriter(tmp_path / "a.rmir", key=Secret("k")) as w:
        w.add_bytes("a.txt", b"one")
        w.add_bytes("b.txt", b"two")
        w.commit({})
    with EffReader(tmp_path / "a.rmir", KeyRing(key=Secret("k"))) as r:
        props = list(r.artifacts.values())
        assert len({p["salt"] for p in props}) == 1 and len({p["nonce"] for p in props}) == 2
        assert 128 * props[0]["kdf_r"] * props[0]["kdf_n"] <= 256 << 20
        assert r.read_bytes("b.txt") == b"two" and r.read_bytes("a.txt") == b"one"
        assert len(r.ring._cache) == 1


# -- 5. props that are not a mapping, contradictory encryption ---------------------------------------------------------

def test_null_props_refused(tmp_path):
    p = write(tmp_path / "a.riva", gzip.compress(good_tar(b"metadata: {}\nartifacts: {x.bin: null}\n"), mtime=0))
    err = refused(p)
    assert str(err) == f"{p}: properties of artifact 'x.bin' must be a mapping, not null"
    p = write(tmp_path / "b.riva", gzip.compress(good_tar(b"metadata: {}\nartifacts: {x.bin: [1]}\n"), mtime=0))
    assert str(refused(p)) == f"{p}: properties of artifact 'x.bin' must be a mapping, not list"


@pytest.mark.parametrize("props", ["{encryption: null, salt: '00'}", "{kdf: scrypt, nonce: '00'}",
                                   "{encryption: false, hmac_sha256: '" + "0" * 64 + "'}"])
def test_plain_artifact_with_cipher_props_refused(tmp_path, props):
    p = write(tmp_path / "a.riva", gzip.compress(good_tar(f"metadata: {{}}\nartifacts: {{x.bin: {props}}}\n".encode()),
                                                 mtime=0))
    err = refused(p)
    assert "is marked unencrypted" in str(err) and "refusing to read it as plaintext" in str(err)


# -- 6. keyed digests --------------------------------------------------------------------------------------------------

def test_encrypted_artifacts_carry_a_keyed_digest_only(tmp_path):
    secret = b"the model graph " * 100
    with EffWriter(tmp_path / "a.rmir", key=Secret("k")) as w:
        final = w.add_bytes("g.onnx", secret, {"sha256": "f" * 64, "salt": "carried from a source"})
        w.commit({})
    plain_sha = hashlib.sha256(secret).hexdigest()
    assert "sha256" not in final and final["salt"] != "carried from a source"
    assert digest_of(final) == final["hmac_sha256"] != plain_sha
    manifest = gzip.decompress((tmp_path / "a.rmir").read_bytes())
    assert plain_sha.encode() not in manifest and b"f" * 64 not in manifest
    with EffReader(tmp_path / "a.rmir", KeyRing(key=Secret("k"))) as r:
        assert r.hash_artifact("g.onnx") == (plain_sha, len(secret))
    # the same content in another archive gets another digest
    with EffWriter(tmp_path / "b.rmir", key=Secret("k")) as w:
        other = w.add_bytes("g.onnx", secret)
        w.commit({})
    assert other["hmac_sha256"] != final["hmac_sha256"]
    # plain archives keep their plain sha256
    with EffWriter(tmp_path / "c.rmir") as w:
        assert w.add_bytes("g.onnx", secret)["sha256"] == plain_sha
        w.commit({})


def test_keyed_digest_mismatch_is_corruption(tmp_path):
    with EffWriter(tmp_path / "a.rmir", key=Secret("k")) as w:
        w.add_bytes("g.onnx", b"graph")
        w.commit({})
    with tarfile.open(tmp_path / "a.rmir") as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]
    edited = []
    for name, data in members:
        if name == "manifest.yaml":
            import re
            data = re.sub(rb"hmac_sha256: '?[0-9a-f]{64}'?", b"hmac_sha256: '" + b"0" * 64 + b"'", data)
        edited.append((name, data))
    p = write(tmp_path / "b.rmir", gzip.compress(tar_of(edited), mtime=0))
    with EffReader(p, KeyRing(key=Secret("k"))) as r, pytest.raises(ArchiveError) as err:
        r.read_bytes("g.onnx")
    assert str(err.value) == f"{p}: artifact 'g.onnx' is corrupt (hmac_sha256 does not match the manifest)"
    with EffReader(p, KeyRing(key=Secret("wrong"))) as r, pytest.raises(WrongKeyError):
        r.read_bytes("g.onnx")


def _old_style_gcm(path, payload: bytes, sha: str) -> None:
    """An archive as servicemaker wrote it before: a salt per artifact and the plaintext sha256 prop."""
    enc = _GcmEncoder(GcmKeys.new(Secret("k")), "g.onnx")
    blob = enc.update(payload) + enc.finish()
    props = ", ".join(f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}" for k, v in enc.props.items())
    manifest = f"metadata: {{}}\nartifacts: {{g.onnx: {{{props}, sha256: '{sha}', size: {len(payload)}}}}}\n"
    write(path, gzip.compress(tar_of([("artifacts/g.onnx", blob), ("manifest.yaml", manifest.encode())]), mtime=0))


def test_old_style_encrypted_archive_still_reads_and_verifies(tmp_path):
    payload = os.urandom(5000)
    _old_style_gcm(tmp_path / "old.rmir", payload, hashlib.sha256(payload).hexdigest())
    with EffReader(tmp_path / "old.rmir", KeyRing(key=Secret("k"))) as r:
        assert r.read_bytes("g.onnx") == payload
        assert digest_of(r.artifacts["g.onnx"]) == hashlib.sha256(payload).hexdigest()
    _old_style_gcm(tmp_path / "bad.rmir", payload, "0" * 64)
    with EffReader(tmp_path / "bad.rmir", KeyRing(key=Secret("k"))) as r, pytest.raises(ArchiveError) as err:
        r.read_bytes("g.onnx")
    assert "is corrupt (sha256 does not match the manifest)" in str(err.value)


# -- 7. bounded messages; inner tars verified to their end ------------------------------------------------------------

def test_messages_do_not_echo_huge_values(tmp_path):
    long = "A" * 200_000
    manifest = f"metadata: {{}}\nartifacts: {{x.bin: {{encryption: {long}}}}}\n".encode()
    p = write(tmp_path / "a.riva", gzip.compress(good_tar(manifest), mtime=0))
    err = refused(p)
    assert str(err).startswith(f"{p}: artifact 'x.bin' uses unknown encryption 'AAAA") and "…" in str(err)
    assert len(str(err)) < len(str(p)) + 200
    name = "n" * 100_000
    tar = tar_of([("manifest.yaml", MANIFEST), ("artifacts/x.bin", b"x"), (f"artifacts/{name}", b"y")],
                 fmt=tarfile.PAX_FORMAT)
    err = refused(write(tmp_path / "b.riva", gzip.compress(tar, mtime=0)), UnsafeArchiveError)
    assert "is not listed in manifest.yaml" in str(err) and len(str(err)) < 300


def test_inner_tar_extraction_verifies_the_artifact_end(tmp_path):
    """Stopping at the inner tar's end marker would skip the GCM tag: the stream is drained and checked first."""
    inner = tar_of([("m.onnx", b"graph"), ("w.bin", b"weights")])
    with EffWriter(tmp_path / "a.rmir", key=Secret("k")) as w:
        w.add_bytes("m.onnx.tar", inner)
        w.commit({})
    with tarfile.open(tmp_path / "a.rmir") as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]
    tampered = [(n, d[:-1] + bytes([d[-1] ^ 1]) if n == "artifacts/m.onnx.tar" else d) for n, d in members]
    p = write(tmp_path / "b.rmir", gzip.compress(tar_of(tampered), mtime=0))
    with EffReader(p, KeyRing(key=Secret("k"))) as r, pytest.raises(ArchiveError, match="failed authentication"):
        onnx_tar.extract(r.open("m.onnx.tar"), tmp_path / "out", "t")
    assert list((tmp_path / "out").iterdir()) == []
    with EffReader(tmp_path / "a.rmir", KeyRing(key=Secret("k"))) as r:
        graph = onnx_tar.extract(r.open("m.onnx.tar"), tmp_path / "ok", "t")
    assert graph.read_bytes() == b"graph"


def test_zlib_error_in_first_member_is_not_gzip(tmp_path):
    raw = bytearray(gzip.compress(good_tar(), mtime=0))
    raw[2] = 99  # compression method
    assert "not an EFF archive" in str(refused(write(tmp_path / "a.riva", bytes(raw))))
