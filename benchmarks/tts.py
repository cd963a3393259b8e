"""Speech synthesis serving benchmark: real-time factor and time to first audio of the deployed voice in a real
Triton, batch (one response) and streaming (gRPC, audio chunks), at concurrency 1 and 4, against the same chain
in-process.

Builds the sample voice at production size (``samples/tts.py``: FastPitch with hidden 384 and six layers each side,
HiFi-GAN V2's 128 channels with full residual blocks; random, seeded weights), deploys it
(``--target onnxruntime-python``), starts Triton on 127.0.0.1, and sends a three-sentence paragraph (about 7.5 s of
audio) from 1 and from 4 client threads for ``--seconds`` each, interleaved over ``--rounds``:

- batch: HTTP requests to ``fastpitch_hifigan_ensemble-<voice>``; latency = time to the whole audio;
- streaming: gRPC streams to ``...-streaming``; time to first audio = time to the first chunk;
- in-process: the repository's own handlers (servicemaker.local: the same ensemble steps, the networks' handlers
  called directly, no Triton), one request at a time, or four together (as Triton's batcher hands them over).

RTF = compute seconds per audio second (wall time / audio time, over all requests of a run; lower is faster). The
goals: streaming time to first audio ≤ 0.3 × batch latency at concurrency 1; Triton's overhead over in-process ≤ 10 %.

    python benchmarks/tts.py [--seconds 20] [--rounds 2] [--size production|sample]

Numbers depend on the machine; compare only ratios taken in one run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

PARAGRAPH = ("The weather is good today, is it not? Speech synthesis turns text into audio, one sentence at a "
             "time. One, two, three, four, five!")
VOICE = "English-US"
ENSEMBLE = f"fastpitch_hifigan_ensemble-{VOICE}"
STREAMING = f"{ENSEMBLE}-streaming"
#: (seconds to the first audio, seconds to the whole audio, audio samples) of one request
Sample = tuple[float, float, int]


def deploy_voice(workdir: Path, size: str) -> Path:
    from servicemaker.build import BuildOptions, build
    from servicemaker.deploy import DeployOptions, deploy
    from servicemaker.keys import ArchiveArg
    from servicemaker.samples.tts import tts_exports

    fp, hg = tts_exports(workdir / "fastpitch.riva", workdir / "hifigan.riva", size=size)
    rmir = workdir / "tts.rmir"
    build(BuildOptions(pipeline="speech_synthesis", output=ArchiveArg(rmir, None),
                       inputs=[ArchiveArg(fp, None), ArchiveArg(hg, None)]))
    deploy(DeployOptions(rmirs=[ArchiveArg(rmir, None)], repo=workdir / "repo", target="onnxruntime-python"))
    return workdir / "repo"


# --- the systems: each makes, per client thread, a callable sending one request ------------------------------------

def triton_batch(url: str) -> Callable[[], Callable[[], Sample]]:
    from servicemaker.client import connect, synthesize

    def make() -> Callable[[], Sample]:
        client = connect(url)

        def one() -> Sample:
            t0 = time.perf_counter()
            audio, _ = synthesize(client, ENSEMBLE, PARAGRAPH)
            dt = time.perf_counter() - t0
            return dt, dt, audio.size
        return one
    return make


def triton_stream(url: str) -> Callable[[], Callable[[], Sample]]:
    from servicemaker.client import connect, synthesize_stream

    def make() -> Callable[[], Sample]:
        client = connect(url, "grpc")

        def one() -> Sample:
            t0 = time.perf_counter()
            first, samples = None, 0
            for audio, _ in synthesize_stream(client, STREAMING, PARAGRAPH):
                first = first if first is not None else time.perf_counter() - t0
                samples += audio.size
            return first or 0.0, time.perf_counter() - t0, samples
        return one
    return make


class InProcess:
    """The repository's handlers in this process; ``batch`` requests go through each step together."""

    def __init__(self, repo: Path) -> None:
        from servicemaker.local import LocalRepository

        self.repo = LocalRepository(repo)
        self.lock = threading.Lock()

    def request(self) -> dict:
        return {"TEXT": np.array([[PARAGRAPH.encode()]], dtype=object)}

    def batch(self, n: int) -> list[Sample]:
        t0 = time.perf_counter()
        answers = self.repo.run(ENSEMBLE, [self.request() for _ in range(n)])
        dt = time.perf_counter() - t0
        return [(dt, dt, a["AUDIO"].size) for a in answers]

    def stream(self, n: int) -> list[Sample]:
        pre = self.repo.handler(f"tts_preprocessor-{VOICE}")
        synth = self.repo.handler(f"tts_synthesizer_streaming-{VOICE}")
        t0 = time.perf_counter()
        feeds = pre.batch([self.request() for _ in range(n)])
        first: dict[int, float] = {}
        samples = [0] * n

        def send(k: int, result, final: bool) -> None:
            first.setdefault(k, time.perf_counter() - t0)
            samples[k] += result["AUDIO"].size

        synth.stream_batch(feeds, send)
        dt = time.perf_counter() - t0
        return [(first[k], dt, samples[k]) for k in range(n)]


def run_threads(make: Callable[[], Callable[[], Sample]], threads: int, seconds: float) -> tuple[list[Sample], float]:
    """Each thread sends requests back to back for ``seconds``; every request's sample and the wall time."""
    out: list[Sample] = []
    lock = threading.Lock()
    senders = [make() for _ in range(threads)]
    stop = time.perf_counter() + seconds

    def loop(one: Callable[[], Sample]) -> None:
        while time.perf_counter() < stop:
            sample = one()
            with lock:
                out.append(sample)

    started = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(s,)) for s in senders]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return out, time.perf_counter() - started


def run_local(step: Callable[[int], list[Sample]], n: int, seconds: float) -> tuple[list[Sample], float]:
    out: list[Sample] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        out.extend(step(n))
    return out, time.perf_counter() - started


def summary(samples: list[Sample], wall: float, rate: int) -> dict[str, float]:
    audio = sum(s[2] for s in samples) / rate
    return {"requests": len(samples), "first_ms": 1e3 * statistics.median(s[0] for s in samples),
            "latency_ms": 1e3 * statistics.median(s[1] for s in samples), "rtf": wall / audio if audio else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per system and concurrency")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (medians over rounds)")
    parser.add_argument("--size", choices=("production", "sample"), default="production")
    args = parser.parse_args()
    from servicemaker.serve import TritonServer

    work = Path(tempfile.mkdtemp(prefix="svc-tts-bench-"))
    server = None
    try:
        t0 = time.perf_counter()
        repo = deploy_voice(work, args.size)
        print(f"voice ({args.size}) built and deployed in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        local = InProcess(repo)
        server = TritonServer(repo).start().wait_ready()
        systems = {
            ("Triton", "batch", 1): lambda s: run_threads(triton_batch(server.http_url), 1, s),
            ("Triton", "batch", 4): lambda s: run_threads(triton_batch(server.http_url), 4, s),
            ("Triton", "streaming", 1): lambda s: run_threads(triton_stream(server.grpc_url), 1, s),
            ("Triton", "streaming", 4): lambda s: run_threads(triton_stream(server.grpc_url), 4, s),
            ("in-process", "batch", 1): lambda s: run_local(local.batch, 1, s),
            ("in-process", "batch", 4): lambda s: run_local(local.batch, 4, s),
            ("in-process", "streaming", 1): lambda s: run_local(local.stream, 1, s),
            ("in-process", "streaming", 4): lambda s: run_local(local.stream, 4, s),
        }
        for run in systems.values():  # warm-up
            run(1.0)
        results: dict[tuple, list[dict]] = {k: [] for k in systems}
        for r in range(args.rounds):
            for key, run in systems.items():
                results[key].append(summary(*run(args.seconds / args.rounds), rate=22050))
                print(f"round {r + 1}: {key}: {results[key][-1]}", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(results)


def report(results: dict[tuple, list[dict]]) -> None:
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in results.items()}
    print(f"\nparagraph: {len(PARAGRAPH)} characters, 3 sentences; medians over rounds\n")
    print("| system | mode | concurrency | requests | time to first audio ms | latency ms | RTF |")
    print("|---|---|---|---|---|---|---|")
    for (system, mode, c), m in med.items():
        print(f"| {system} | {mode} | {c} | {m['requests']:.0f} | {m['first_ms']:.1f} | {m['latency_ms']:.1f} | "
              f"{m['rtf']:.4f} |")
    print("\n| concurrency | streaming first audio / batch latency (Triton) | Triton / in-process latency, batch | "
          "Triton / in-process first audio, streaming | Triton / in-process RTF, batch |")
    print("|---|---|---|---|---|")
    for c in (1, 4):
        tb, ts = med[("Triton", "batch", c)], med[("Triton", "streaming", c)]
        lb, ls = med[("in-process", "batch", c)], med[("in-process", "streaming", c)]
        print(f"| {c} | {ts['first_ms'] / tb['latency_ms']:.3f} | {tb['latency_ms'] / lb['latency_ms']:.3f} | "
              f"{ts['first_ms'] / ls['first_ms']:.3f} | {tb['rtf'] / lb['rtf']:.3f} |")
    print("\ngoals: streaming first audio <= 0.3 x batch latency (concurrency 1); Triton / in-process <= 1.10")


if __name__ == "__main__":
    main()
