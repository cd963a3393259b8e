"""Round trips for every codec, wrong and missing keys, the salt table, keys never shown."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from servicemaker.eff import EffReader, EffWriter, KeyRing, SaltTable
from servicemaker.eff.codecs import legacy_key
from servicemaker.errors import ArchiveError, MissingKeyError, NotFoundError, SaltsError, WrongKeyError
from servicemaker.keys import Secret, parse_archive_arg

from conftest import CIPHER_ID

PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)  # crosses the 1 MiB read chunks


def _write(path, key=None, legacy=None):
    with EffWriter(path, key=Secret(key) if key else None, legacy=legacy) as w:
        w.add_bytes("model_config.yaml", b"a: 1\n", {"description": "cfg"})
        w.add_bytes("model_graph.onnx", PAYLOAD, {"onnx": True})
        w.commit({"format_version": 3, "obj_cls": "x.y.Z"})
    return path


@pytest.mark.parametrize("codec", ["plain", "legacy", "gcm"])
def test_round_trip(tmp_path, codec, salt, salt_table):
    key = None if codec == "plain" else "tlt_encode"
    legacy = (CIPHER_ID, salt) if codec == "legacy" else None
    path = _write(tmp_path / "a.riva", key, legacy)
    with EffReader(path, KeyRing(key=Secret(key) if key else None, salts=salt_table)) as r:
        assert r.read_bytes("model_config.yaml") == b"a: 1\n"
        stream = r.open("model_graph.onnx")
        assert stream.size == len(PAYLOAD)
        assert stream.read() == PAYLOAD
        props = r.artifacts["model_graph.onnx"]
        if codec == "gcm":  # encrypted: a keyed digest, never the plaintext sha256 (it confirms guesses)
            assert "sha256" not in props and len(props["hmac_sha256"]) == 64
            assert props["hmac_sha256"] != hashlib.sha256(PAYLOAD).hexdigest()
        else:
            assert props["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
        assert props["onnx"] is True
        assert r.metadata["obj_cls"] == "x.y.Z"
        expected = {"plain": False, "legacy": CIPHER_ID, "gcm": "aes-256-gcm"}[codec]
        assert props["encryption"] == expected
        if codec != "plain":
            assert PAYLOAD[:64] not in path.read_bytes()


def test_legacy_layout_is_nvidia_eff(tmp_path, salt, salt_table):
    """IV ‖ AES-256-CTR(PBKDF2-HMAC-SHA256(passphrase, salt, 100000)), decrypted here independently."""
    path = _write(tmp_path / "a.riva", "tlt_encode", (CIPHER_ID, salt))
    import tarfile

    with tarfile.open(path) as tf:
        blob = tf.extractfile("artifacts/model_config.yaml").read()
    key = hashlib.pbkdf2_hmac("sha256", b"tlt_encode", salt, 100000, 32)
    assert key == legacy_key(Secret("tlt_encode"), salt)
    plain = Cipher(algorithms.AES(key), modes.CTR(blob[:16])).decryptor().update(blob[16:])
    assert plain == b"a: 1\n"


def test_legacy_wrong_key(tmp_path, salt, salt_table):
    path = _write(tmp_path / "a.riva", "tlt_encode", (CIPHER_ID, salt))
    with EffReader(path, KeyRing(key=Secret("not_it"), salts=salt_table)) as r:
        with pytest.raises(WrongKeyError) as err:
            r.read_bytes("model_config.yaml")
    assert str(err.value) == (f"{path}: wrong key for artifact 'model_config.yaml' (the sha256 of the decrypted "
                              "content does not match the manifest)")
    assert "not_it" not in str(err.value) and "not_it" not in (err.value.hint or "")


def test_gcm_wrong_key_fails_before_reading_payload(tmp_path):
    path = _write(tmp_path / "a.rmir", "right")
    with EffReader(path, KeyRing(key=Secret("wrong"))) as r:
        with pytest.raises(WrongKeyError) as err:
            r.open("model_graph.onnx")
    assert str(err.value) == f"{path}: wrong key for artifact 'model_graph.onnx' (the key check does not match)"


def test_gcm_tampering_detected(tmp_path):
    """Flip one ciphertext byte inside the (uncompressed) tar: the GCM tag refuses it."""
    import gzip
    import tarfile

    path = _write(tmp_path / "a.rmir", "right")
    raw = bytearray(gzip.decompress(path.read_bytes()))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tf:
        info = tf.getmember("artifacts/model_graph.onnx")
    raw[info.offset_data + 1000] ^= 1
    bad = tmp_path / "bad.rmir"
    bad.write_bytes(gzip.compress(bytes(raw)))
    with EffReader(bad, KeyRing(key=Secret("right"))) as r, pytest.raises(ArchiveError) as err:
        r.read_bytes("model_graph.onnx", max_bytes=1 << 30)
    assert "failed authentication" in str(err.value)


def test_gcm_artifacts_cannot_be_swapped(tmp_path):
    """The artifact name is authenticated: renaming a ciphertext in the manifest fails."""
    from servicemaker.eff.codecs import decoder_for

    path = _write(tmp_path / "a.rmir", "k")
    with EffReader(path, KeyRing(key=Secret("k"))) as r:
        props = r.artifacts["model_config.yaml"]
        blob = b""
        import tarfile

        with tarfile.open(path) as tf:
            blob = tf.extractfile("artifacts/model_config.yaml").read()
    dec = decoder_for("other_name.yaml", props, KeyRing(key=Secret("k")))
    dec.update(blob[:-16])
    with pytest.raises(ArchiveError, match="failed authentication"):
        dec.finish(blob[-16:])


def test_missing_key(tmp_path):
    path = _write(tmp_path / "a.rmir", "k")
    with EffReader(path) as r, pytest.raises(MissingKeyError) as err:
        r.open("model_config.yaml")
    assert str(err.value) == f"{path}: artifact 'model_config.yaml' is encrypted and no key was given"
    assert "PATH:KEY" in err.value.hint


def test_legacy_without_salts(tmp_path, salt):
    path = _write(tmp_path / "a.riva", "tlt_encode", (CIPHER_ID, salt))
    with EffReader(path, KeyRing(key=Secret("tlt_encode"))) as r, pytest.raises(SaltsError) as err:
        r.open("model_config.yaml")
    assert f"legacy EFF cipher '{CIPHER_ID}', whose salt is not known" in str(err.value)
    assert "--eff-salts" in err.value.hint


def test_salt_table_file(tmp_path, salt):
    good = tmp_path / "s.yaml"
    good.write_text(f"{CIPHER_ID}: {salt.hex()}\n")
    assert SaltTable.from_file(good).get(CIPHER_ID) == salt
    with pytest.raises(SaltsError, match="has no entry for legacy cipher id 'abcdefghij'"):
        SaltTable.from_file(good).get("abcdefghij")
    bad = tmp_path / "b.yaml"
    bad.write_text("Short: 00\nabcdefghij: zz\n")
    with pytest.raises(SaltsError) as err:
        SaltTable.from_file(bad)
    assert "'Short' is not a cipher id" in str(err.value) and "salt of 'abcdefghij' is not 64 hex" in str(err.value)
    with pytest.raises(NotFoundError, match="does not exist"):
        SaltTable.from_file(tmp_path / "nope.yaml")


def test_salts_from_environment(tmp_path, salt, monkeypatch):
    p = tmp_path / "s.yaml"
    p.write_text(f"{CIPHER_ID}: {salt.hex()}\n")
    monkeypatch.setenv("SERVICEMAKER_EFF_SALTS", str(p))
    assert CIPHER_ID in SaltTable.from_option(None)


def test_key_argument_forms(tmp_path, monkeypatch):
    assert parse_archive_arg("m.riva").key is None
    assert parse_archive_arg("m.riva:tlt_encode").key == Secret("tlt_encode")
    assert parse_archive_arg("m.riva:a:b").key == Secret("a:b")
    monkeypatch.setenv("MYKEY", "from-env")
    assert parse_archive_arg("m.riva:env:MYKEY").key == Secret("from-env")
    kf = tmp_path / "key.txt"
    kf.write_text("from-file\n")
    assert parse_archive_arg(f"m.riva:file:{kf}").key == Secret("from-file")
    assert parse_archive_arg("m.riva:raw:env:x").key == Secret("env:x")
    odd = tmp_path / "has:colon.riva"
    odd.write_bytes(b"")
    assert parse_archive_arg(str(odd)) .key is None
    with pytest.raises(MissingKeyError, match="'UNSET_VAR' named as the key of m.riva is not set"):
        parse_archive_arg("m.riva:env:UNSET_VAR")
    assert "from-env" not in repr(parse_archive_arg("m.riva:env:MYKEY"))
