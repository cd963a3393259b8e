"""The compile cache, local store: keys (each input changes the key, nothing else does), hit/miss, atomic publish
under concurrent deploys, corrupt entries, LRU eviction, --no-cache, protected entries of encrypted RMIRs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from servicemaker.build import BuildOptions, build
from servicemaker.deploy import DeployOptions, cache, deploy, networks
from servicemaker.errors import UsageError
from servicemaker.keys import ArchiveArg, Secret, parse_archive_arg

NN = "riva-onnx-riva_text_classification_misc-nn-tiny-bert"
GRAPH_MARKER = b"input_ids"   # a graph input's name: in every plaintext model.onnx of the tiny samples


class Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def step(self, message: str) -> None:
        self.lines.append(message)

    def warn(self, message: str) -> None:
        self.lines.append(message)

    def track(self, stream, label, total):
        return stream

    def activity(self, label):
        from contextlib import nullcontext
        return nullcontext()


def make_rmir(src: Path, out: Path, key: str | None = None, in_key: str | None = None, name: str | None = None,
              domain_name: str | None = None, **overrides) -> Path:
    build(BuildOptions(pipeline="text_classification", output=ArchiveArg(out, Secret(key) if key else None), name=name,
                       domain_name=domain_name,
                       inputs=[ArchiveArg(src, Secret(in_key) if in_key else None)],
                       overrides={k.replace("__", "."): str(v) for k, v in overrides.items()}))
    return out


def run(rmir, repo: Path, key: str | None = None, rep=None, **kw):
    arg = rmir if isinstance(rmir, ArchiveArg) else ArchiveArg(Path(rmir), Secret(key) if key else None)
    return deploy(DeployOptions(rmirs=[arg], repo=repo, target=kw.pop("target", "onnxruntime"), **kw), rep)


def status(repo: Path) -> dict:
    return json.loads((repo / "deploy_status.json").read_text())


def entries(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / cache.COMPILE_DIR).glob("*/*") if p.is_dir())


@pytest.fixture()
def local(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(folder))
    return folder


@pytest.fixture()
def tc(tiny, tmp_path) -> Path:
    return make_rmir(tiny / "text_classification.riva", tmp_path / "tc.rmir")


# --- keys -------------------------------------------------------------------------------------------------------------

def key_of(status_doc: dict) -> str:
    return status_doc["models"][NN]["cache"]["key"]


def test_key_ignores_names_places_force_and_key_spelling(tiny, tmp_path, local, monkeypatch):
    a = make_rmir(tiny / "text_classification.riva", tmp_path / "a.rmir")
    first = run(a, tmp_path / "r1")
    assert first.cache == {NN: "miss"}
    moved = tmp_path / "elsewhere" / "renamed.rmir"
    moved.parent.mkdir()
    shutil.copyfile(a, moved)
    renamed = make_rmir(tiny / "text_classification.riva", tmp_path / "b.rmir", name="another_name",
                        domain_name="weather")
    assert run(moved, tmp_path / "r2").cache == {NN: "hit"}
    assert run(a, tmp_path / "r1", force=True).cache == {NN: "hit"}
    other = run(renamed, tmp_path / "r3")     # other model and ensemble names, same network
    assert list(other.cache.values()) == ["hit"] and NN not in other.cache
    keys = {key_of(status(tmp_path / r)) for r in ("r1", "r2")}
    keys.add(next(m["cache"]["key"] for m in status(tmp_path / "r3")["models"].values() if "cache" in m))
    assert len(keys) == 1 and len(entries(local)) == 1
    # an encrypted RMIR: its key given literally, from the environment, from a file: the same entry
    enc = make_rmir(tiny / "text_classification.riva", tmp_path / "enc.rmir", key="s3cret")
    assert run(enc, tmp_path / "e1", key="s3cret").cache == {NN: "miss"}
    monkeypatch.setenv("TC_KEY", "s3cret")
    (tmp_path / "keyfile").write_text("s3cret\n")
    for spelled in (f"{enc}:env:TC_KEY", f"{enc}:file:{tmp_path / 'keyfile'}"):
        assert run(parse_archive_arg(spelled), tmp_path / "e2", force=True).cache == {NN: "hit"}


@pytest.mark.parametrize("change", [
    {"overrides": {"nn.precision": "int8"}},
    {"overrides": {"nn.accuracy_tolerance": "0.02"}},
    {"overrides": {"nn.fuse": "false"}},
    {"allow_accuracy_drop": True},
    {"target": "onnxruntime-python"},
])
def test_each_deploy_input_changes_the_key(tc, tmp_path, local, change):
    base = key_of(status(run(tc, tmp_path / "base").repo))
    changed = run(tc, tmp_path / "changed", **change)
    assert changed.cache and set(changed.cache.values()) == {"miss"}
    name = next(iter(changed.cache))
    assert status(tmp_path / "changed")["models"][name]["cache"]["key"] != base
    assert len(entries(local)) == 2


@pytest.mark.parametrize("build_change", [
    {"tokenizer__max_seq_length": 48},           # another component's parameter the sample feeds read
    {"nn__max_batch_size": 4},                   # the network's own parameter
    {"nn__calibration_data": "calib-a.txt"},     # the calibration artifact's digest
])
def test_each_build_input_changes_the_key(tiny, tmp_path, local, build_change):
    (tmp_path / "calib-a.txt").write_text("one example\nanother example\n")
    change = {k: str(tmp_path / v) if v == "calib-a.txt" else v for k, v in build_change.items()}
    base = make_rmir(tiny / "text_classification.riva", tmp_path / "base.rmir")
    other = make_rmir(tiny / "text_classification.riva", tmp_path / "other.rmir", **change)
    k1 = key_of(status(run(base, tmp_path / "r1").repo))
    assert run(other, tmp_path / "r2").cache == {NN: "miss"}
    assert key_of(status(tmp_path / "r2")) != k1


def test_another_graph_and_another_calibration_file_change_the_key(tiny, tmp_path, local, monkeypatch):
    from servicemaker.samples import models

    (tmp_path / "c1.txt").write_text("first\n")
    (tmp_path / "c2.txt").write_text("second\n")
    c1 = make_rmir(tiny / "text_classification.riva", tmp_path / "c1.rmir", nn__calibration_data=tmp_path / "c1.txt")
    c2 = make_rmir(tiny / "text_classification.riva", tmp_path / "c2.rmir", nn__calibration_data=tmp_path / "c2.txt")
    monkeypatch.setattr(models, "SEED", models.SEED + 1)
    reseeded = models.tiny_nlp_export("text_classification", tmp_path / "reseeded.riva")
    g2 = make_rmir(reseeded, tmp_path / "g2.rmir")
    base = make_rmir(tiny / "text_classification.riva", tmp_path / "base.rmir")
    keys = set()
    for i, rmir in enumerate((base, c1, c2, g2)):
        assert run(rmir, tmp_path / f"r{i}").cache == {NN: "miss"}
        keys.add(key_of(status(tmp_path / f"r{i}")))
    assert len(keys) == 4


def test_versions_and_engine_fingerprint_change_the_key(tc, tmp_path, local, monkeypatch):
    """Each leaf of what key_inputs gathers changes the key; servicemaker's and onnx's versions and the TensorRT
    builder's fingerprint are among them."""
    seen = {}
    real = cache.compile_key

    def spy(inputs, protection=None):
        seen["inputs"] = inputs
        return real(inputs, protection)

    monkeypatch.setattr(cache, "compile_key", spy)
    run(tc, tmp_path / "r")
    inputs = seen["inputs"]
    assert inputs["versions"]["servicemaker"] and inputs["versions"]["onnx"] and inputs["versions"]["onnxruntime"]
    assert inputs["versions"]["onnx-graphsurgeon"]
    assert inputs["components"]["nn"]["artifacts"]["graph"]
    assert inputs["compile"]["allow_accuracy_drop"] is False and inputs["target"] == "onnxruntime"
    base = real(inputs)

    def leaves(doc, path=()):
        if isinstance(doc, dict) and doc:
            for k, v in doc.items():
                yield from leaves(v, path + (k,))
        else:
            yield path

    count = 0
    for path in leaves(inputs):
        changed = json.loads(json.dumps(inputs, default=str))
        node = changed
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = f"changed-{node[path[-1]]!r}"
        assert real(changed) != base, path
        count += 1
    assert count > 20
    # the tensorrt target adds the engine settings and the builder's fingerprint
    from servicemaker.deploy import tensorrt as trt
    monkeypatch.setattr(trt, "missing", lambda: None)
    monkeypatch.setattr(trt, "use_rtx", lambda: False)
    fp = {"builder": "tensorrt", "tensorrt_version": "10.9", "gpu": "NVIDIA L4", "compute_capability": "8.9"}
    monkeypatch.setattr(trt, "fingerprint", lambda: dict(fp))
    monkeypatch.setattr(trt, "build_engine", lambda o, p, s: (p.write_bytes(b"plan-" + fp["gpu"].encode()),
                                                              {"bytes": 5})[1])
    monkeypatch.setattr(trt, "run_engine", lambda p, feeds, outs: __import__(
        "servicemaker.deploy.optimize", fromlist=["run"]).run(seen["onnx"], feeds, outputs=outs))
    real_save = networks.graphs.save

    def save(model, path):
        seen["onnx"] = model.SerializeToString()
        return real_save(model, path)

    monkeypatch.setattr(networks.graphs, "save", save)
    keys = []
    for gpu, cc in (("NVIDIA L4", "8.9"), ("NVIDIA L4", "8.9"), ("NVIDIA A100", "8.0")):
        fp.update(gpu=gpu, compute_capability=cc)
        result = run(tc, tmp_path / "trt", target="tensorrt", force=True)
        nn = next(iter(result.cache))
        keys.append((result.cache[nn], status(tmp_path / "trt")["models"][nn]["cache"]["key"]))
        assert seen["inputs"]["builder"] == fp and seen["inputs"]["engine"]["workspace_mib"] == 4096
        assert (tmp_path / "trt" / nn / "1" / "model.plan").read_bytes() == b"plan-" + gpu.encode()
    assert [k[0] for k in keys] == ["miss", "hit", "miss"]
    assert keys[0][1] == keys[1][1] != keys[2][1]


# --- hit / miss / off -----------------------------------------------------------------------------------------------

def test_second_deploy_hits_and_writes_identical_files(tc, tmp_path, local):
    cold = run(tc, tmp_path / "cold")
    warm = run(tc, tmp_path / "warm", rep=(rec := Recorder()))
    assert cold.cache == {NN: "miss"} and warm.cache == {NN: "hit"}
    assert any("from the local compile cache" in line for line in rec.lines)
    a, b = (tmp_path / r / NN / "1" / "model.onnx" for r in ("cold", "warm"))
    assert a.read_bytes() == b.read_bytes()
    s_cold, s_warm = status(tmp_path / "cold"), status(tmp_path / "warm")
    assert s_warm["models"][NN]["optimization"] == s_cold["models"][NN]["optimization"]
    assert s_warm["models"][NN]["cache"] == {"status": "hit", "key": key_of(s_cold), "store": "local"}
    assert s_cold["models"][NN]["cache"] == {"status": "miss", "key": key_of(s_cold), "published": ["local"]}
    step = next(s for s in s_warm["steps"] if s["name"] == "prepare_networks")
    assert step[NN]["cache"]["status"] == "hit" and step[NN]["nodes"] > 0
    assert oct((tmp_path / "warm" / NN / "1" / "model.onnx").stat().st_mode & 0o777) == "0o644"


def test_no_cache_neither_reads_nor_writes(tc, tmp_path, local):
    off = run(tc, tmp_path / "off", use_cache=False)
    assert off.cache == {NN: "off"} and entries(local) == []
    assert status(tmp_path / "off")["models"][NN]["cache"] == {"status": "off"}
    run(tc, tmp_path / "on")
    assert run(tc, tmp_path / "off2", use_cache=False).cache == {NN: "off"}
    with pytest.raises(UsageError, match="contradict"):
        run(tc, tmp_path / "both", use_cache=False, cache="file:///nowhere")


def test_bad_size_cap_and_unwritable_folder_are_usage_errors(tc, tmp_path, local, monkeypatch):
    monkeypatch.setenv(cache.SIZE_ENV, "lots")
    with pytest.raises(UsageError, match=cache.SIZE_ENV):
        run(tc, tmp_path / "r")
    monkeypatch.setenv(cache.SIZE_ENV, "1.5G")
    assert cache.size_cap() == int(1.5 * (1 << 30))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv(cache.CACHE_ENV, str(blocker))
    with pytest.raises(UsageError, match="cannot use the compile cache folder") as err:
        run(tc, tmp_path / "r")
    assert "--no-cache" in err.value.hint
    assert not (tmp_path / "r").exists()


# --- corrupt entries ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["flip", "truncate", "remove", "manifest"])
def test_corrupt_entry_is_dropped_rebuilt_and_republished(tc, tmp_path, local, damage):
    run(tc, tmp_path / "cold")
    [entry] = entries(local)
    target = entry / "model.onnx"
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "remove":
        target.unlink()
    else:
        (entry / cache.MANIFEST).write_text("{not json")
    rec = Recorder()
    again = run(tc, tmp_path / "again", rep=rec)
    assert again.cache == {NN: "rebuilt"}
    assert any(line.startswith("warning: compile cache entry") and "corrupt" in line for line in rec.lines)
    assert (tmp_path / "again" / NN / "1" / "model.onnx").read_bytes() == \
        (tmp_path / "cold" / NN / "1" / "model.onnx").read_bytes()
    assert run(tc, tmp_path / "third").cache == {NN: "hit"}    # republished, whole


# --- atomic publish ----------------------------------------------------------------------------------------------------

DEPLOY_SCRIPT = """
import sys
from pathlib import Path
from servicemaker.deploy import DeployOptions, deploy
from servicemaker.keys import ArchiveArg
r = deploy(DeployOptions(rmirs=[ArchiveArg(Path(sys.argv[1]), None)], repo=Path(sys.argv[2]), target="onnxruntime"))
print(r.cache)
"""


def test_two_concurrent_deploys_share_one_cache(tc, tmp_path, local):
    env = dict(os.environ, **{cache.CACHE_ENV: str(local)})
    procs = [subprocess.Popen([sys.executable, "-c", DEPLOY_SCRIPT, str(tc), str(tmp_path / f"repo{i}")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert len(entries(local)) == 1 and not list((local / cache.COMPILE_DIR).glob(".tmp-*"))
    onnx = {(tmp_path / f"repo{i}" / NN / "1" / "model.onnx").read_bytes() for i in range(2)}
    third = run(tc, tmp_path / "repo3")
    assert third.cache == {NN: "hit"}
    assert (tmp_path / "repo3" / NN / "1" / "model.onnx").read_bytes() in onnx


def test_concurrent_publishers_and_readers_never_see_a_torn_entry(tmp_path, local):
    store = cache.CompileCache(None, lambda line: None)
    src = tmp_path / "src"
    src.mkdir()
    payload = os.urandom(3 << 20)
    (src / "model.onnx").write_bytes(payload)
    key = "ab" * 32
    seen, problems = [], []
    stop = threading.Event()

    def writer():
        for _ in range(5):
            store.publish(key, {"model.onnx": src / "model.onnx"}, {"report": {}, "detail": {}}, None)

    def reader(i):
        while not stop.is_set():
            dest = tmp_path / f"dest{i}"
            dest.mkdir(exist_ok=True)
            meta, where, corrupt = store.lookup(key, dest, None)
            if corrupt:
                problems.append("corrupt")
            if meta is not None:
                seen.append((dest / "model.onnx").read_bytes() == payload)
            shutil.rmtree(dest)

    readers = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    writers = [threading.Thread(target=writer) for _ in range(3)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join(timeout=120)
    stop.set()
    for t in readers:
        t.join(timeout=120)
    assert problems == [] and seen and all(seen)
    assert len(entries(local)) == 1 and not list((local / cache.COMPILE_DIR).glob(".tmp-*"))


# --- eviction ---------------------------------------------------------------------------------------------------------

def _entry(store: cache.LocalStore, tmp_path: Path, key: str, size: int, used: float) -> None:
    src = tmp_path / f"src-{key[:4]}"
    src.write_bytes(os.urandom(size))
    scratch = store.scratch()
    cache.pack(key, {"model.onnx": src}, {"report": {}, "detail": {}}, None, scratch)
    assert store.publish(scratch, key)
    os.utime(store.entry(key) / cache.MANIFEST, (used, used))


def test_eviction_drops_least_recently_used_first_never_the_new_entry(tmp_path, local):
    store = cache.LocalStore(local)
    keys = [c * 64 for c in "abcd"]
    for i, key in enumerate(keys):
        _entry(store, tmp_path, key, 10_000, used=1_000_000 + i)
    store.touch(keys[0])                      # a hit: a is now the most recently used
    evicted = store.evict(25_000, keep=keys[3])
    assert evicted == [keys[1], keys[2]]
    assert sorted(e.name for e in entries(local)) == [keys[0], keys[3]]
    assert store.evict(0, keep=keys[3]) == [keys[0]]
    assert [e.name for e in entries(local)] == [keys[3]]


def test_small_cap_keeps_only_what_fits(tiny, tmp_path, local, monkeypatch):
    monkeypatch.setenv(cache.SIZE_ENV, "1")
    a = make_rmir(tiny / "text_classification.riva", tmp_path / "a.rmir")
    b = make_rmir(tiny / "text_classification.riva", tmp_path / "b.rmir", tokenizer__max_seq_length=48)
    run(a, tmp_path / "r1")
    [first] = entries(local)
    run(b, tmp_path / "r2")
    [second] = entries(local)
    assert first != second
    assert run(a, tmp_path / "r3").cache == {NN: "miss"}


# --- encrypted RMIRs ---------------------------------------------------------------------------------------------------

def test_protected_entries_hold_no_plaintext_and_need_the_key(tiny, tmp_path, local):
    plain = make_rmir(tiny / "text_classification.riva", tmp_path / "plain.rmir")
    run(plain, tmp_path / "p")
    [plain_entry] = entries(local)
    assert GRAPH_MARKER in (plain_entry / "model.onnx").read_bytes()   # the marker is there when not protected
    shutil.rmtree(plain_entry)
    enc = make_rmir(tiny / "text_classification.riva", tmp_path / "enc.rmir", key="key-one")
    assert run(enc, tmp_path / "e", key="key-one").cache == {NN: "miss"}
    [entry] = entries(local)
    manifest = json.loads((entry / cache.MANIFEST).read_text())
    assert manifest["protection"]["cipher"] == "aes-256-gcm"
    for path in entry.iterdir():
        data = path.read_bytes()
        assert GRAPH_MARKER not in data and b"fused" not in data and b"cosine" not in data, path.name
    assert run(enc, tmp_path / "e2", key="key-one").cache == {NN: "hit"}
    assert (tmp_path / "e2" / NN / "1" / "model.onnx").read_bytes() == \
        (tmp_path / "e" / NN / "1" / "model.onnx").read_bytes()
    # the same network in an RMIR under another key: another cache key, and the entry does not open with it
    other = make_rmir(tiny / "text_classification.riva", tmp_path / "other.rmir", key="key-two")
    assert run(other, tmp_path / "o", key="key-two").cache == {NN: "miss"}
    dest = tmp_path / "dest"
    dest.mkdir()
    assert cache.unpack(entry, manifest, dest, cache.Protection(Secret("key-two"))) is None
    assert cache.unpack(entry, manifest, dest, None) is None
    assert list(dest.iterdir()) == []
    assert cache.unpack(entry, manifest, dest, cache.Protection(Secret("key-one")))["detail"]["file"] == "model.onnx"


# --- a hit neither extracts nor loads the graph ---------------------------------------------------------------------

def _capture_network_state(monkeypatch) -> list:
    """Record, as render_configs starts, each RMIR's signature and its family's state."""
    import servicemaker.deploy as deploy_mod

    seen: list = []

    def render(d, real=deploy_mod.render_configs):
        seen.append([(n.signature, dict(n.job.state), n.job.graph_path) for r in d.rmirs for n in r.networks.values()])
        return real(d)

    monkeypatch.setattr(deploy_mod, "STEPS", [(n, render if n == "render_configs" else f)
                                              for n, f in deploy_mod.STEPS])
    return seen


def _repository(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*"))
            if p.is_file() and p.name != "deploy_status.json"}


def test_hit_neither_extracts_nor_loads_the_graph_and_writes_the_same_repository(tc, tmp_path, local, monkeypatch):
    from servicemaker.eff.reader import EffReader

    seen = _capture_network_state(monkeypatch)
    cold = run(tc, tmp_path / "cold")
    assert cold.cache == {NN: "miss"}
    extracted = []
    real_extract = EffReader.extract
    monkeypatch.setattr(EffReader, "extract", lambda self, name, *a, **kw: (extracted.append(name),
                                                                           real_extract(self, name, *a, **kw))[1])

    def no_load(path):
        raise AssertionError(f"the graph {path} was loaded on a hit")

    monkeypatch.setattr(networks.graphs, "load", no_load)
    warm = run(tc, tmp_path / "warm")
    assert warm.cache == {NN: "hit"}
    assert extracted and not any(n.endswith(".onnx") for n in extracted), extracted   # the vocabulary, not the graph
    assert _repository(tmp_path / "warm") == _repository(tmp_path / "cold")
    steps = {s["name"]: s for s in status(tmp_path / "warm")["steps"]}
    assert steps["lookup_cache"][NN]["status"] == "hit"
    assert next(v for k, v in steps["check_graphs"].items() if isinstance(v, dict))["from"] == "compile cache"
    (sig_cold, state_cold, graph_cold), = seen[0]
    (sig_warm, state_warm, graph_warm), = seen[1]
    assert sig_warm == sig_cold and state_warm == state_cold == {} and graph_cold and graph_warm is None


def test_asr_state_restored_from_the_cache_equals_the_computed_one(tiny, tmp_path, local, monkeypatch):
    from pipelines._asr import FAMILY

    rmir = tmp_path / "asr.rmir"
    build(BuildOptions(pipeline="speech_recognition", output=ArchiveArg(rmir, None),
                       inputs=[ArchiveArg(tiny / "speech_recognition.riva", None)]))
    seen = _capture_network_state(monkeypatch)
    assert set(run(rmir, tmp_path / "cold", target="onnxruntime-python").cache.values()) == {"miss"}
    assert set(run(rmir, tmp_path / "warm", target="onnxruntime-python").cache.values()) == {"hit"}
    (sig_cold, state_cold, _), = seen[0]
    (sig_warm, state_warm, graph_warm), = seen[1]
    assert graph_warm is None and sig_warm == sig_cold
    assert set(state_warm) == {"featurizer", "stride", "ms_per_timestep"}
    assert state_warm == {k: state_cold[k] for k in state_warm}
    assert _repository(tmp_path / "warm") == _repository(tmp_path / "cold")
    saved = json.loads(json.dumps({"featurizer": __import__("dataclasses").asdict(state_cold["featurizer"]),
                                   "stride": state_cold["stride"], "ms_per_timestep": state_cold["ms_per_timestep"]}))
    assert FAMILY.restore_state(None, saved) == {k: state_cold[k] for k in state_warm}
    for bad in ({}, {**saved, "stride": 0}, {**saved, "ms_per_timestep": "x"}, {**saved, "extra": 1},
                {**saved, "featurizer": {**saved["featurizer"], "window": "kaiser"}},
                {**saved, "featurizer": {"sample_rate": 16000}}, None):
        with pytest.raises(ValueError):
            FAMILY.restore_state(None, bad)


def _rewrite_meta(entry: Path, change) -> None:
    """Replace an (unprotected) entry's meta.json with change(meta), its entry.json record kept consistent, as an
    entry written by another servicemaker would be."""
    import hashlib

    meta = json.loads((entry / cache.META).read_text())
    change(meta)
    data = json.dumps(meta).encode()
    (entry / cache.META).write_bytes(data)
    manifest = json.loads((entry / cache.MANIFEST).read_text())
    manifest["files"][cache.META] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (entry / cache.MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("change", [
    lambda m: m.pop("network"),                                               # written before the state was kept
    lambda m: m["network"].pop("signature"),
    lambda m: m["network"]["signature"]["inputs"][0].__setitem__(1, "TYPE_NOT_A_TYPE"),
    lambda m: m["network"]["signature"].__setitem__("outputs", []),
    lambda m: m["network"].__setitem__("state", {"featurizer": None}),       # NLP keeps no state
])
def test_missing_or_malformed_stored_state_is_a_miss_and_rebuilt(tc, tmp_path, local, change):
    run(tc, tmp_path / "cold")
    [entry] = entries(local)
    _rewrite_meta(entry, change)
    rec = Recorder()
    again = run(tc, tmp_path / "again", rep=rec)
    assert again.cache == {NN: "rebuilt"}
    assert any(line.startswith("warning: compile cache entry") and "meta.json" in line for line in rec.lines)
    assert _repository(tmp_path / "again") == _repository(tmp_path / "cold")
    assert run(tc, tmp_path / "third").cache == {NN: "hit"}    # republished, with its state


def test_a_changed_compiler_changes_the_key(tmp_path):
    """A development checkout keeps its version number while its code changes: the key covers the code's bytes."""
    from servicemaker.deploy import networks

    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.txt").write_text("calibration sentence\n")
    (pkg / "notes.md").write_text("not code\n")
    first = networks.code_digest((pkg,))
    (pkg / "notes.md").write_text("still not code\n")
    assert networks.code_digest((pkg,)) == first
    (pkg / "sub" / "b.txt").write_text("another sentence\n")
    second = networks.code_digest((pkg,))
    assert second != first
    (pkg / "a.py").write_text("x = 2\n")
    assert networks.code_digest((pkg,)) not in (first, second)
    (pkg / "a.py").rename(pkg / "c.py")
    assert networks.code_digest((pkg,)) != second
    assert networks._versions()["servicemaker_code"] == networks._own_code()
