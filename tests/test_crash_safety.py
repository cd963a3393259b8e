"""Crash safety: svc-build and svc-deploy killed with SIGKILL at many points of their work.

Every series runs the real CLI (the environment's console scripts) as a subprocess. A first full run writes the
output and measures how long the command takes; then, for each kill point, the command (changed so that its output
would differ from the one on disk) is started and killed with SIGKILL after a delay — evenly spread fractions of the
measured time, plus very early and very late ones — or as soon as a phase shows on disk (its temporary file or
staging folder appears, or grows past a size). After each kill:

* the previous output is intact: the same bytes; the RMIR opens with EffReader and every artifact's sha256 verifies,
  ``svc-inspect --verify`` exits 0; every ``config.pbtxt`` parses as Triton's ModelConfig and the files it names
  exist;
* the same command run again succeeds, and the output's folder then holds nothing the killed run left.

The deploy series also kill a deploy onto a destination that does not exist (nothing may appear there but a whole
repository), and kill a deploy inside its commit (deterministically, before each call of the commit's steps): there
the repository may hold the killed deploy's models until the next svc-deploy rolls them back, which is checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import numpy_helper
from tritonclient.grpc import model_config_pb2

from servicemaker.eff.reader import EffReader
from servicemaker.errors import ServiceMakerError
from servicemaker.samples.export import Artifact, write_export
from servicemaker.spec import read_spec

BIN = Path(sys.executable).parent
TC = "text_classification"
#: random weights added to the tiny export so that svc-build works for about a second (they do not compress)
BALLAST_MB = 8
#: kill delays, as fractions of a full run's measured time: very early (Python starting), evenly spread, very late
FRACTIONS = (0.02, 0.12, 0.24, 0.36, 0.48, 0.6, 0.72, 0.84, 0.92, 0.97)
FRESH_FRACTIONS = (0.3, 0.7)
#: deploys alternate between these compiler settings, so a killed deploy's network differs from the one on disk
VARIANTS = {"fused": (), "unfused": ("--nn.fuse=false",)}
STAGE = ".repo.svc-deploy-"

KILLS: list[Kill] = []


@dataclass
class Kill:
    series: str
    point: str            # "0.40 x 1.52 s", or the phase waited for
    at: float = 0.0       # seconds from the start to the kill
    killed: bool = False  # False: the command finished before the kill was sent
    phase: str = ""       # what the disk showed right after the kill
    problems: list[str] = field(default_factory=list)   # broken promises about the previous output
    next_rc: int = 0
    next_err: str = ""
    left: list[str] = field(default_factory=list)       # what the killed run left, still there after the next run


# --- running and killing ---------------------------------------------------------------------------------------------

def full_run(cmd: list[str]) -> tuple[int, str, float]:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stderr[-3000:], time.perf_counter() - started


def kill_run(cmd: list[str], delay: float | None = None, when: Callable[[], bool] | None = None) -> tuple[bool, float]:
    """Start ``cmd``; SIGKILL it after ``delay`` seconds or once ``when()`` holds. Returns (killed, seconds)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.perf_counter()
    try:
        if delay is not None:
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
        else:
            assert when is not None
            while proc.poll() is None and time.perf_counter() - started < 120:
                if _holds(when):
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.002)
        at = time.perf_counter() - started
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode == -signal.SIGKILL, at


def _holds(condition: Callable[[], bool]) -> bool:
    try:
        return condition()
    except OSError:  # a file or folder looked at went away meanwhile
        return False


def points(fractions: tuple[float, ...], phases: list[tuple[str, Callable[[], bool]]]):
    """(fraction of the run time, condition) of every kill point of a series."""
    return [(f, None) for f in fractions] + [(None, (label, cond)) for label, cond in phases]


def aim(point, duration: float) -> tuple[str, float | None, Callable[[], bool] | None]:
    """(label, delay, condition) of a kill point, for a command that takes ``duration`` seconds (the quickest full
    run seen so far: on a busy machine that keeps the late kills inside the run)."""
    fraction, phase = point
    if fraction is not None:
        return f"{fraction:.2f} x {duration:.2f} s", fraction * duration, None
    return f"when {phase[0]}", None, phase[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- svc-build -------------------------------------------------------------------------------------------------------

def big_export(src: Path, dst: Path, megabytes: int) -> Path:
    """The tiny export with ``megabytes`` of random weights added to its graph as an unused initializer."""
    arts = []
    with EffReader(src) as reader:
        for name, props in reader.artifacts.items():
            data = reader.read_bytes(name, max_bytes=1 << 40)
            if name.endswith(".onnx"):
                graph = onnx.load_from_string(data)
                weights = np.random.default_rng(12).standard_normal(megabytes << 18).astype(np.float32)
                graph.graph.initializer.append(numpy_helper.from_array(weights, "crash_test_ballast"))
                data = graph.SerializeToString()
            arts.append(Artifact(name, data, dict(props)))
        meta = dict(reader.metadata)
    dst.parent.mkdir(parents=True, exist_ok=True)
    return write_export(dst, meta.pop("obj_cls"), arts, metadata=meta)


def rmir_problems(path: Path, want_sha: str, want_name: str, inspect: bool = True) -> list[str]:
    """Why ``path`` is not the intact previous RMIR (named ``want_name``); empty when it is."""
    problems = []
    if not path.is_file():
        return [f"{path.name} is gone"]
    if sha256(path) != want_sha:
        problems.append(f"{path.name} is not the previous RMIR byte for byte")
    try:
        with EffReader(path) as reader:
            name = read_spec(reader.metadata, str(path)).name
            if name != want_name:
                problems.append(f"the RMIR's ensemble is {name!r}, not the previous {want_name!r}")
            for art, props in reader.artifacts.items():
                digest, _ = reader.hash_artifact(art)
                if digest != props.get("sha256"):
                    problems.append(f"artifact {art}: sha256 {digest} differs from the manifest's")
    except ServiceMakerError as err:
        problems.append(f"EffReader: {err}")
    if inspect:
        done = subprocess.run([str(BIN / "svc-inspect"), str(path), "--verify"], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            problems.append(f"svc-inspect --verify exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return problems


@pytest.fixture(scope="module")
def build_kills(tiny_dir, tmp_path_factory) -> list[Kill]:
    work = tmp_path_factory.mktemp("crash-build")
    src = big_export(tiny_dir / f"{TC}.riva", work / "in" / "big.riva", BALLAST_MB)
    out_dir = work / "out"
    out_dir.mkdir()
    out = out_dir / "model.rmir"

    def cmd(i: int) -> list[str]:
        return [str(BIN / "svc-build"), TC, str(out), str(src), "-f", f"--name=crash_{i}", "-q"]

    seen: set[str] = set()  # what earlier kills left: the phases below look for this run's files only

    def temps() -> list[Path]:
        return [p for p in out_dir.iterdir() if p.name != out.name and p.name not in seen]

    rc, err, duration = full_run(cmd(0))
    assert rc == 0, err
    prev_sha, prev_name, size = sha256(out), "crash_0", out.stat().st_size

    def grown(share: float) -> Callable[[], bool]:
        return lambda: any(p.stat().st_size >= share * size for p in temps())

    series = points(FRACTIONS, [("the temporary RMIR appears", lambda: bool(temps())),
                                ("the temporary RMIR holds half the bytes", grown(0.5)),
                                ("the temporary RMIR holds 90% of the bytes", grown(0.9))])
    kills = []
    for i, point in enumerate(series, start=1):
        seen.update(p.name for p in out_dir.iterdir())
        label, delay, when = aim(point, duration)
        k = Kill("svc-build", label)
        k.killed, k.at = kill_run(cmd(i), delay, when)
        left = temps()
        if not k.killed:
            k.phase = "finished before the kill"
        elif left:
            k.phase = "writing: " + ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} of {size / 1e6:.1f} MB"
                                              for p in left)
        elif sha256(out) == prev_sha:
            k.phase = "before the RMIR was opened for writing"
        else:
            k.phase = "after the rename into place"
        if k.killed and k.phase != "after the rename into place":
            k.problems = rmir_problems(out, prev_sha, prev_name)
        else:  # the run reached its commit: the output must be the whole new RMIR
            k.problems = rmir_problems(out, sha256(out), f"crash_{i}")
        killed_left = {p.name for p in left}
        k.next_rc, k.next_err, took = full_run(cmd(i))
        duration = min(duration, took)
        k.left = sorted(p.name for p in out_dir.iterdir() if p.name in killed_left)
        if k.next_rc == 0:
            prev_sha, prev_name = sha256(out), f"crash_{i}"
            k.problems += [f"after the next run: {p}" for p in rmir_problems(out, prev_sha, prev_name, False)]
        kills.append(k)
    KILLS.extend(kills)
    return kills


# --- svc-deploy ------------------------------------------------------------------------------------------------------

def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def repo_problems(repo: Path) -> list[str]:
    """Why ``repo`` is not a loadable model repository; empty when it is."""
    if not repo.is_dir():
        return [f"{repo.name} is not a folder"]
    problems = []
    models = {p.name for p in repo.iterdir() if p.is_dir()}
    if not models:
        problems.append("no model folders")
    for name in sorted(models):
        folder = repo / name
        try:
            cfg = parse_config(folder / "config.pbtxt")
        except (OSError, text_format.ParseError) as err:
            problems.append(f"{name}/config.pbtxt: {err}")
            continue
        version = folder / "1"
        needed = []
        if cfg.name != name:
            problems.append(f"{name}/config.pbtxt names model {cfg.name!r}")
        if cfg.backend == "python":
            needed += ["model.py", "svc_handlers.py", "svc_common.py"]
            for key, param in cfg.parameters.items():
                value = param.string_value
                if key != "handler" and Path(value).suffix[1:].isalpha() and "/" not in value:
                    needed.append(value)  # a file the handler reads
        elif cfg.backend == "onnxruntime":
            needed.append(cfg.default_model_filename or "model.onnx")
        elif cfg.platform == "ensemble":
            problems += [f"{name}: step model {s.model_name} is missing" for s in cfg.ensemble_scheduling.step
                         if not (repo / s.model_name / "config.pbtxt").is_file()]
        if not version.is_dir():
            problems.append(f"{name}/1 is missing")
        problems += [f"{name}/1/{f} is missing" for f in needed if not (version / f).is_file()]
    try:
        json.loads((repo / "deploy_status.json").read_text())
    except (OSError, ValueError) as err:
        problems.append(f"deploy_status.json: {err}")
    return problems


def snapshot(repo: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every path under ``repo`` with its content's sha256 (folders as "dir")."""
    if not repo.exists():
        return {}
    return {str(p.relative_to(repo)): "dir" if p.is_dir() else sha256(p)
            for p in sorted(repo.rglob("*")) if str(p.relative_to(repo)) not in skip}


def stages(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(STAGE)]


def deploy_phase(folder: Path) -> str:
    """Which part of its work a killed deploy had reached, read from the staging folder it left."""
    found = stages(folder)
    if not found:
        return "starting (no staging folder yet)"
    stage = found[0]
    if (stage / "commit.json").exists():
        return "commit (journal written, model folders being swapped in)"
    if (stage / "fresh").exists():
        return "commit (assembling the new repository)"
    if (stage / "backup").exists():
        return "committed (removing the staging folder)"
    if (stage / "models").exists():
        return "writing model folders in the staging folder"
    if any((stage / "work").glob("*/label_tokens-*")):  # the last artifact extracted
        return "checking and optimizing the network"
    if (stage / "work").exists():
        return "extracting artifacts"
    return "staging folder created"


def deploy_cmd(rmir: Path, repo: Path, variant: str = "fused", force: bool = True) -> list[str]:
    return ([str(BIN / "svc-deploy"), str(rmir), str(repo), "--target", "onnxruntime-python", "--nn.precision=fp32",
             *VARIANTS[variant], "-q"] + (["-f"] if force else []))


def finished(phase: str, before: dict[str, str], after: dict[str, str]) -> str:
    """A deploy killed with no staging folder left but the repository changed had finished: it died exiting."""
    return "finished its work (killed while exiting)" if phase.startswith("starting") and before != after else phase


def staged(folder: Path, sub: str) -> Callable[[], bool]:
    return lambda: any(any(s.glob(sub)) for s in stages(folder))


@pytest.fixture(scope="module")
def deploy_kills(tiny_rmirs, tmp_path_factory) -> list[Kill]:
    """An existing repository, redeployed with -f and killed."""
    work = tmp_path_factory.mktemp("crash-deploy")
    repo, rmir = work / "repo", tiny_rmirs[TC]
    durations = {}
    for variant in VARIANTS:
        rc, err, durations[variant] = full_run(deploy_cmd(rmir, repo, variant))
        assert rc == 0, err
    prev = snapshot(repo)
    series = points(FRACTIONS, [("the staging folder appears", lambda: bool(stages(work))),
                                ("the graph is extracted", staged(work, "work/*/nn-graph")),
                                ("model folders are staged", staged(work, "models/*/1"))])
    kills = []
    for i, point in enumerate(series):
        variant = list(VARIANTS)[i % 2]  # the previous deploy used the other one
        label, delay, when = aim(point, durations[variant])
        k = Kill("svc-deploy", label)
        k.killed, k.at = kill_run(deploy_cmd(rmir, repo, variant), delay, when)
        after_kill = snapshot(repo)
        k.phase = finished(deploy_phase(work), prev, after_kill) if k.killed else "finished before the kill"
        killed_left = {p.name for p in stages(work)}
        k.problems = repo_problems(repo)
        if k.phase.startswith("commit ("):
            # killed inside the commit: the models may be the killed deploy's; none may be missing
            if {p.split("/")[0] for p in after_kill} != {p.split("/")[0] for p in prev}:
                k.problems.append("the set of model folders changed")
        elif k.killed and not k.phase.startswith(("committed", "finished")) and after_kill != prev:
            changed = sorted(p for p in set(prev) | set(after_kill) if prev.get(p) != after_kill.get(p))
            k.problems.append(f"the repository changed: {changed[:5]}")
        k.next_rc, k.next_err, took = full_run(deploy_cmd(rmir, repo, variant))
        durations[variant] = min(durations[variant], took)
        k.left = sorted(p.name for p in work.iterdir() if p.name in killed_left)
        if k.next_rc == 0:
            k.problems += [f"after the next run: {p}" for p in repo_problems(repo)]
            if k.phase.startswith(("committed", "finished")) and snapshot(repo, ("deploy_status.json",)) != {
                    p: v for p, v in after_kill.items() if p != "deploy_status.json"}:
                k.problems.append("the repository the kill left is not the one the command writes")
        prev = snapshot(repo)
        kills.append(k)
    KILLS.extend(kills)
    return kills


@pytest.fixture(scope="module")
def fresh_kills(tiny_rmirs, tmp_path_factory) -> list[Kill]:
    """A deploy onto a destination that does not exist yet, killed; the last two one and two folders deeper."""
    work = tmp_path_factory.mktemp("crash-fresh")
    rmir = tiny_rmirs[TC]
    rc, err, duration = full_run(deploy_cmd(rmir, work / "measure", force=False))
    assert rc == 0, err
    shutil.rmtree(work / "measure")
    series = points(FRESH_FRACTIONS, [("model folders are staged", staged(work, "models/*/1")),
                                      ("the staging folder appears", lambda: bool(stages(work)))])
    kills = []
    for i, point in enumerate(series):
        label, delay, when = aim(point, duration)
        depth = max(0, i - len(series) + 3)  # folders to create above the repository
        dest = work.joinpath(*["new"] * depth, "repo")
        k = Kill("svc-deploy (no repository yet)", label + (f", into {dest.relative_to(work)}" if depth else ""))
        k.killed, k.at = kill_run(deploy_cmd(rmir, dest, force=False), delay, when)
        k.phase = deploy_phase(work) if k.killed else "finished before the kill"
        killed_left = {p.name for p in stages(work)}
        if dest.exists():  # only a whole repository may appear, with the commit's rename
            k.phase += "; the repository appeared"
            k.problems = repo_problems(dest)
        whole = dest.exists()  # then the next run keeps its models: no measure of a deploy
        k.next_rc, k.next_err, took = full_run(deploy_cmd(rmir, dest, force=False))
        duration = duration if whole else min(duration, took)
        if k.next_rc == 0:
            k.problems += [f"after the next run: {p}" for p in repo_problems(dest)]
        k.left = sorted(p.name for p in work.iterdir() if p.name in killed_left)
        shutil.rmtree(work / ("new" if depth else "repo"), ignore_errors=True)
        kills.append(k)
    KILLS.extend(kills)
    return kills


#: a deploy that SIGKILLs itself just before the N-th call of the commit's steps (move_in per model folder,
#: write_file for requirements.txt and deploy_status.json, finish, close)
INJECT = """
import os, signal, sys
from servicemaker.deploy import staging
at, calls = int(sys.argv[1]), [0]
def wrap(name):
    inner = getattr(staging.Staging, name)
    def step(self, *args):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return inner(self, *args)
    setattr(staging.Staging, name, step)
for name in ("move_in", "write_file", "finish", "close"):
    wrap(name)
sys.argv = ["svc-deploy"] + sys.argv[2:]
from servicemaker.cli.deploy import main
main()
"""
COMMIT_CALLS = ("move_in 1", "move_in 2", "move_in 3", "move_in 4", "write_file requirements.txt",
                "write_file deploy_status.json", "finish", "close")
#: the calls killed before: nothing swapped in yet, some model folders swapped in, all of them and requirements.txt,
#: deploy_status.json too, the commit done
COMMIT_KILLS = (1, 3, 6, 7, 8)


@pytest.fixture(scope="module")
def commit_kills(tiny_rmirs, tmp_path_factory) -> list[Kill]:
    work = tmp_path_factory.mktemp("crash-commit")
    repo, rmir = work / "repo", tiny_rmirs[TC]
    rc, err, _ = full_run(deploy_cmd(rmir, repo))
    assert rc == 0, err
    prev = snapshot(repo)
    prev_status = json.loads((repo / "deploy_status.json").read_text())["models"]
    kills = []
    for at in COMMIT_KILLS:
        call = COMMIT_CALLS[at - 1]
        k = Kill("svc-deploy (inside the commit)", f"before {call}")
        cmd = [sys.executable, "-c", INJECT, str(at)] + deploy_cmd(rmir, repo, "unfused")[1:]
        k.killed, k.at = kill_run(cmd, when=lambda: False)
        k.phase = deploy_phase(work)
        killed_left = {p.name for p in stages(work)}
        after_kill = snapshot(repo)
        k.problems = repo_problems(repo)
        if {p.split("/")[0] for p in after_kill} != {p.split("/")[0] for p in prev}:
            k.problems.append("the set of model folders changed")
        # the next deploy (no -f: it keeps what is there) first rolls back what the killed commit did
        k.next_rc, k.next_err, _ = full_run(deploy_cmd(rmir, repo, "unfused", force=False))
        k.left = sorted(p.name for p in work.iterdir() if p.name in killed_left)
        status = json.loads((repo / "deploy_status.json").read_text())["models"]
        now = snapshot(repo, ("deploy_status.json",))
        if call == "close":  # the commit had finished: the repository is the killed deploy's, whole
            if now == {p: v for p, v in prev.items() if p != "deploy_status.json"} or status == prev_status:
                k.problems.append("a finished commit was rolled back")
        elif now != {p: v for p, v in prev.items() if p != "deploy_status.json"} or status != prev_status:
            k.problems.append("the next deploy did not roll the repository back to the previous one")
        kills.append(k)
    KILLS.extend(kills)
    return kills


# --- the commit's journal, in-process: every point, with and without renameat2 ----------------------------------------

def _tree(root: Path, models: dict[str, str], files: dict[str, str]) -> None:
    for name, text in models.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(text)
    for name, text in files.items():
        (root / name).write_text(text)


#: the commit's calls after begin(), each one more step than the one before
JOURNAL_STEPS = (("move_in", "a"), ("move_in", "c"), ("write_file", "requirements.txt"),
                 ("write_file", "deploy_status.json"))


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
@pytest.mark.parametrize("done", range(len(JOURNAL_STEPS) + 1))
def test_a_dead_commit_is_rolled_back_by_the_next_sweep(tmp_path, monkeypatch, exchange, done):
    from servicemaker.deploy import staging

    if not exchange:
        monkeypatch.setattr(staging, "_exchange", lambda a, b: False)
    repo = tmp_path / "repo"
    _tree(repo, {"a": "old a", "b": "old b"}, {"requirements.txt": "old\n", "deploy_status.json": "{}"})
    before = snapshot(repo)
    stage = staging.Staging(repo)
    _tree(stage.path / staging.MODELS, {"a": "new a", "c": "new c"}, {})
    stage.begin(["a", "c"], ("requirements.txt", "deploy_status.json"))
    for call, name in JOURNAL_STEPS[:done]:
        getattr(stage, call)(*((name,) if call == "move_in" else (name, f"new {name}")))
    assert repo_problems_light(repo) == [] and {"a", "b"} <= {p.name for p in repo.iterdir()}
    os.close(stage._fd)  # the deploy dies: its lock goes, its staging folder and journal stay
    stage._fd = None
    journal = json.loads((stage.path / staging.JOURNAL).read_text())
    # a roll-back that died after its first model (they go last to first) is run again from the start
    staging.roll_back(stage.path, {**journal, "models": journal["models"][-1:], "files": {}})
    assert staging.sweep(repo) == [stage.path]
    assert snapshot(repo) == before and not stage.path.exists()


def repo_problems_light(repo: Path) -> list[str]:
    """Model folders a reader may see mid-commit: each whole (its config beside its version folder)."""
    return [p.name for p in repo.iterdir() if p.is_dir() and not ((p / "config.pbtxt").is_file() and (p / "1").is_dir())]


def test_a_running_deploys_staging_folder_is_left_alone(tmp_path):
    from servicemaker.deploy import staging

    repo = tmp_path / "repo"
    running = staging.Staging(repo)
    dead = staging.Staging(repo)
    os.close(dead._fd)
    dead._fd = None
    assert staging.sweep(repo) == [dead.path]
    assert running.path.is_dir()
    running.close()
    assert not running.path.exists() and list(tmp_path.iterdir()) == []


# --- the promises ----------------------------------------------------------------------------------------------------

def _report(kills: list[Kill]) -> str:
    return "\n".join(f"{k.series} killed {k.point} (at {k.at:.2f} s, {k.phase}): {k.problems} "
                     f"next rc {k.next_rc} {k.next_err.strip()[-300:]} left {k.left}" for k in kills)


def test_killed_build_leaves_the_previous_rmir_and_the_next_build_succeeds(build_kills):
    assert sum(k.killed for k in build_kills) >= 10, _report(build_kills)
    assert any(k.phase.startswith("writing") for k in build_kills), _report(build_kills)
    bad = [k for k in build_kills if k.problems or k.next_rc != 0]
    assert not bad, _report(bad)


def test_next_build_removes_what_a_killed_build_left(build_kills):
    left = [k for k in build_kills if k.left]
    assert not left, _report(left)


def test_killed_deploy_leaves_the_previous_repository_and_the_next_deploy_cleans_up(deploy_kills):
    assert sum(k.killed for k in deploy_kills) >= 10, _report(deploy_kills)
    bad = [k for k in deploy_kills if k.problems or k.next_rc != 0 or k.left]
    assert not bad, _report(bad)


def test_killed_deploy_onto_no_repository_shows_none_or_a_whole_one(fresh_kills):
    assert sum(k.killed for k in fresh_kills) >= 3, _report(fresh_kills)
    bad = [k for k in fresh_kills if k.problems or k.next_rc != 0 or k.left]
    assert not bad, _report(bad)


def test_deploy_killed_inside_its_commit_is_rolled_back_by_the_next_deploy(commit_kills):
    assert all(k.killed for k in commit_kills), _report(commit_kills)
    assert [k.phase.split(" (")[0] for k in commit_kills] == ["commit"] * 4 + ["committed"], _report(commit_kills)
    bad = [k for k in commit_kills if k.problems or k.next_rc != 0 or k.left]
    assert not bad, _report(bad)


def test_kill_points_summary(build_kills, deploy_kills, fresh_kills, commit_kills, capsys):
    per_tool = {tool: sum(k.killed for k in KILLS if k.series.startswith(tool)) for tool in ("svc-build", "svc-deploy")}
    with capsys.disabled():
        print(f"\ncrash safety: {per_tool['svc-build']} svc-build and {per_tool['svc-deploy']} svc-deploy runs "
              "killed with SIGKILL")
        for k in KILLS:
            print(f"  {k.series:32} {k.point:48} at {k.at:5.2f} s  {k.phase}"
                  + (f"  [left after the next run: {', '.join(k.left)}]" if k.left else ""))
    assert per_tool["svc-build"] >= 10 and per_tool["svc-deploy"] >= 10
