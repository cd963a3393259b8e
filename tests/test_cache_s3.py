"""The compile cache's shared store and RMIRs read from object stores, against a real local S3 server (moto's
server mode on 127.0.0.1) and file:// URLs."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from servicemaker.deploy import cache
from servicemaker.errors import NotFoundError, UsageError
from servicemaker.keys import ArchiveArg, Secret, parse_archive_arg

from s3server import free_port, s3_server
from test_cache import GRAPH_MARKER, NN, Recorder, make_rmir, run, status

BUCKET = "cache"
URL = f"s3://{BUCKET}/servicemaker"


@pytest.fixture(scope="module")
def s3():
    with s3_server(buckets=(BUCKET, "rmirs")) as endpoint:
        yield endpoint


@pytest.fixture()
def aws(s3, monkeypatch):
    """The AWS environment pointing at the server (restored after each test, whatever it changed)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3


def objects(endpoint: str, bucket: str = BUCKET) -> dict[str, bytes]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def clear(endpoint: str, bucket: str = BUCKET) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for key in objects(endpoint, bucket):
        client.delete_object(Bucket=bucket, Key=key)


def fresh_local(tmp_path: Path, monkeypatch, name: str) -> Path:
    folder = tmp_path / name
    monkeypatch.setenv(cache.CACHE_ENV, str(folder))
    return folder


def test_s3_round_trip_with_an_empty_local_cache(tiny, tmp_path, aws, monkeypatch):
    clear(aws)
    rmir = make_rmir(tiny / "text_classification.riva", tmp_path / "tc.rmir")
    fresh_local(tmp_path, monkeypatch, "build-server")
    cold = run(rmir, tmp_path / "cold", cache=URL)
    assert cold.cache == {NN: "miss"}
    assert status(tmp_path / "cold")["models"][NN]["cache"]["published"] == ["local", URL]
    stored = objects(aws)
    assert sum(k.startswith("servicemaker/entries/") for k in stored) == 1
    assert sum(k.startswith("servicemaker/blobs/") for k in stored) == 2    # model.onnx, meta.json
    cluster = fresh_local(tmp_path, monkeypatch, "cluster-node")
    rec = Recorder()
    warm = run(rmir, tmp_path / "warm", cache=URL, rep=rec)
    assert warm.cache == {NN: "hit"}
    assert status(tmp_path / "warm")["models"][NN]["cache"]["store"] == URL
    assert any(f"from the {URL} compile cache" in line for line in rec.lines)
    assert (tmp_path / "warm" / NN / "1" / "model.onnx").read_bytes() == \
        (tmp_path / "cold" / NN / "1" / "model.onnx").read_bytes()
    assert len(list((cluster / cache.COMPILE_DIR).glob("*/*"))) == 1          # copied into the local store
    assert run(rmir, tmp_path / "local-hit", cache=URL).cache == {NN: "hit"}
    assert status(tmp_path / "local-hit")["models"][NN]["cache"]["store"] == "local"


def test_corrupt_shared_entry_is_dropped_and_republished(tiny, tmp_path, aws, monkeypatch):
    import boto3

    clear(aws)
    rmir = make_rmir(tiny / "text_classification.riva", tmp_path / "tc.rmir")
    fresh_local(tmp_path, monkeypatch, "one")
    run(rmir, tmp_path / "cold", cache=URL)
    client = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    biggest = max(objects(aws).items(), key=lambda kv: len(kv[1]))          # model.onnx's blob
    damaged = bytearray(biggest[1])
    damaged[100] ^= 0xFF
    client.put_object(Bucket=BUCKET, Key=biggest[0], Body=bytes(damaged))
    fresh_local(tmp_path, monkeypatch, "two")
    rec = Recorder()
    again = run(rmir, tmp_path / "again", cache=URL, rep=rec)
    assert again.cache == {NN: "rebuilt"}
    assert any("corrupt" in line and URL in line for line in rec.lines)
    assert objects(aws)[biggest[0]] == biggest[1]                          # republished whole
    fresh_local(tmp_path, monkeypatch, "three")
    assert run(rmir, tmp_path / "third", cache=URL).cache == {NN: "hit"}


def test_protected_entries_in_s3_hold_no_plaintext(tiny, tmp_path, aws, monkeypatch):
    clear(aws)
    enc = make_rmir(tiny / "text_classification.riva", tmp_path / "enc.rmir", key="cluster-key")
    fresh_local(tmp_path, monkeypatch, "one")
    assert run(enc, tmp_path / "e", key="cluster-key", cache=URL).cache == {NN: "miss"}
    stored = objects(aws)
    assert stored and all(GRAPH_MARKER not in data and b"cosine" not in data for data in stored.values())
    fresh_local(tmp_path, monkeypatch, "two")
    assert run(enc, tmp_path / "e2", key="cluster-key", cache=URL).cache == {NN: "hit"}
    other = make_rmir(tiny / "text_classification.riva", tmp_path / "other.rmir", key="another-key")
    assert run(other, tmp_path / "o", key="another-key", cache=URL).cache == {NN: "miss"}


def test_concurrent_publishers_to_s3_never_leave_a_torn_entry(tmp_path, aws, monkeypatch):
    """Two deploys (own local stores) publish the same protected network (different ciphertexts) while two others
    (empty local stores) read it: every read is a miss or the whole, right payload."""
    clear(aws)
    payload = os.urandom(2 << 20)
    src = tmp_path / "model.onnx"
    src.write_bytes(payload)
    key = "cd" * 32
    secret = Secret("shared")
    problems, seen = [], []
    stop = threading.Event()
    caches = []
    for i in range(4):
        fresh_local(tmp_path, monkeypatch, f"local{i}")
        caches.append(cache.CompileCache(URL, problems.append))

    def writer(c):
        for _ in range(3):
            c.publish(key, {"model.onnx": src}, {"report": {}, "detail": {}}, cache.Protection(secret))
            shutil.rmtree(c.local.entry(key), ignore_errors=True)        # so the next publish uploads again
            c.shared.drop(key, None, [])

    def reader(c, i):
        while not stop.is_set():
            dest = tmp_path / f"dest{i}"
            dest.mkdir(exist_ok=True)
            meta, where, corrupt = c.lookup(key, dest, cache.Protection(secret))
            if meta is not None:
                seen.append((dest / "model.onnx").read_bytes() == payload)
            shutil.rmtree(c.local.entry(key), ignore_errors=True)
            shutil.rmtree(dest)

    threads = [threading.Thread(target=writer, args=(caches[i],)) for i in range(2)]
    threads += [threading.Thread(target=reader, args=(caches[i], i)) for i in (2, 3)]
    for t in threads:
        t.start()
    for t in threads[:2]:
        t.join(timeout=240)
    stop.set()
    for t in threads[2:]:
        t.join(timeout=240)
    assert [p for p in problems if "corrupt" in p] == [] and all(seen)


# --- bad --cache URLs: one clear error before any work ------------------------------------------------------------

def _refused(rmir: Path, repo: Path, url: str, error: type, *words: str) -> None:
    rec = Recorder()
    with pytest.raises(error) as err:
        run(rmir, repo, cache=url, rep=rec)
    text = f"{err.value} {err.value.hint}"
    for word in words:
        assert word in text, text
    assert not repo.exists() and not any(line.startswith("Reading") for line in rec.lines)


def test_bad_cache_urls(tiny, tmp_path, aws, monkeypatch):
    rmir = make_rmir(tiny / "text_classification.riva", tmp_path / "tc.rmir")
    repo = tmp_path / "repo"
    _refused(rmir, repo, "nosuch://bucket/x", UsageError, "nosuch://bucket/x", "unknown URL scheme")
    _refused(rmir, repo, "gs://bucket/x", UsageError, "gs://bucket/x", "not installed", "pip install")
    _refused(rmir, repo, "s3://no-such-bucket/x", NotFoundError, "s3://no-such-bucket/x", "does not exist")
    _refused(rmir, repo, "/plain/path", UsageError, "not a URL")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    _refused(rmir, repo, URL, UsageError, URL, "access refused", "AWS_ACCESS_KEY_ID")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    _refused(rmir, repo, URL, UsageError, URL, "unreachable", "AWS_ENDPOINT_URL")


def test_file_url_shared_store(tiny, tmp_path, monkeypatch):
    rmir = make_rmir(tiny / "text_classification.riva", tmp_path / "tc.rmir")
    shared = f"file://{tmp_path / 'shared'}"
    fresh_local(tmp_path, monkeypatch, "one")
    assert run(rmir, tmp_path / "a", cache=shared).cache == {NN: "miss"}
    assert len(list((tmp_path / "shared" / "entries").glob("*.json"))) == 1
    assert not list((tmp_path / "shared").rglob("*.tmp-*"))
    fresh_local(tmp_path, monkeypatch, "two")
    assert run(rmir, tmp_path / "b", cache=shared).cache == {NN: "hit"}


# --- RMIRs from object stores ----------------------------------------------------------------------------------------

def test_rmir_from_s3_and_file_urls(tiny, tmp_path, aws, monkeypatch):
    import boto3

    enc = make_rmir(tiny / "text_classification.riva", tmp_path / "enc.rmir", key="k3y")
    client = boto3.client("s3", endpoint_url=aws, region_name="us-east-1")
    client.upload_file(str(enc), "rmirs", "models/tc.rmir")
    monkeypatch.setenv("RMIR_KEY", "k3y")
    arg = parse_archive_arg("s3://rmirs/models/tc.rmir:env:RMIR_KEY")
    assert arg.url == "s3://rmirs/models/tc.rmir" and arg.shown == arg.url and arg.key == Secret("k3y")
    result = run(arg, tmp_path / "from-s3", cache=URL)
    assert NN in result.written
    doc = status(tmp_path / "from-s3")
    assert doc["inputs"][0]["file"] == "tc.rmir"
    from servicemaker.build import sha256_file
    assert doc["inputs"][0]["sha256"] == sha256_file(enc)[0]
    local = run(ArchiveArg(enc, Secret("k3y")), tmp_path / "from-file")
    assert (tmp_path / "from-s3" / NN / "1" / "model.onnx").read_bytes() == \
        (tmp_path / "from-file" / NN / "1" / "model.onnx").read_bytes()
    assert local.cache == {NN: "hit"}
    via_file = run(parse_archive_arg(f"file://{enc}:k3y"), tmp_path / "via-file-url")
    assert NN in via_file.written
    with pytest.raises(NotFoundError, match="s3://rmirs/models/missing.rmir does not exist"):
        run(parse_archive_arg("s3://rmirs/models/missing.rmir:env:RMIR_KEY"), tmp_path / "missing")
    with pytest.raises(NotFoundError, match="does not exist"):
        run(parse_archive_arg("s3://no-such-bucket/tc.rmir"), tmp_path / "nobucket")
    with pytest.raises(UsageError, match="names no object"):
        parse_archive_arg("s3://")
    assert not (tmp_path / "missing").exists() and not (tmp_path / "nobucket").exists()
