"""Latency of long inputs in a real Triton server: a 400-word paragraph against a 20-word sentence.

Deploys the MiniLM token_classification and punctuation samples (``--target onnxruntime-python``,
``max_seq_length`` 128), starts Triton on 127.0.0.1 and sends, one request at a time for ``--seconds`` each, a
20-word sentence (the baseline, one window) and a 400-word paragraph (windows of 128 tokens, ``doc_stride`` 63). It
prints p50/p95 client latency, the ratio to the 20-word baseline measured in the same command, and the cost per
word relative to the baseline.

    python benchmarks/long_input.py [--seconds 10] [--protocol http]

Numbers depend on the machine; compare only ratios taken in one run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

WORDS = ("the committee met on tuesday to review the budget for next year and several members asked whether the new "
         "library in springfield would open before the summer because john smith from acme corporation said the "
         "contractors in boston had delayed the delivery of steel until march").split()


def text(words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def deploy_samples(workdir: Path) -> Path:
    from servicemaker.build import BuildOptions, build
    from servicemaker.deploy import DeployOptions, deploy
    from servicemaker.keys import ArchiveArg
    from servicemaker.samples import models

    encoder, tokenizer = models.load_minilm()
    rmirs = []
    for pipeline in ("token_classification", "punctuation"):
        export = models.minilm_export(pipeline, workdir / f"{pipeline}.riva", encoder, tokenizer)
        rmirs.append(workdir / f"{pipeline}.rmir")
        build(BuildOptions(pipeline=pipeline, output=ArchiveArg(rmirs[-1], None), inputs=[ArchiveArg(export, None)]))
    deploy(DeployOptions(rmirs=[ArchiveArg(p, None) for p in rmirs], repo=workdir / "repo",
                         target="onnxruntime-python"))
    return workdir / "repo"


def measure(client, ensemble: str, inputs: list[str], seconds: float, protocol: str) -> list[float]:
    from servicemaker.client import infer

    latencies = []
    stop = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        infer(client, ensemble, {"TEXT": [inputs[i % len(inputs)]]}, protocol)
        latencies.append(time.perf_counter() - t0)
        i += 1
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    args = parser.parse_args()

    from servicemaker.client import connect, infer
    from servicemaker.serve import TritonServer

    short = [text(20, seed) for seed in range(8)]
    long = [text(400, 100 + seed) for seed in range(8)]
    with tempfile.TemporaryDirectory() as tmp:
        repo = deploy_samples(Path(tmp))
        with TritonServer(repo) as server:
            url = server.http_url if args.protocol == "http" else server.grpc_url
            client = connect(url, args.protocol)
            print("| ensemble | input | requests | p50 ms | p95 ms | p50 vs 20 words | per word vs 20 words |")
            print("|---|---|---|---|---|---|---|")
            for ensemble in ("riva_ner", "riva_punctuation"):
                for t in short + long:  # warm-up
                    infer(client, ensemble, {"TEXT": [t]}, args.protocol)
                base = None
                for label, inputs, words in (("20 words", short, 20), ("400 words", long, 400)):
                    lat = sorted(measure(client, ensemble, inputs, args.seconds, args.protocol))
                    p50 = 1e3 * statistics.median(lat)
                    p95 = 1e3 * lat[int(0.95 * (len(lat) - 1))]
                    base = base or (p50, words)
                    print(f"| {ensemble} | {label} | {len(lat)} | {p50:.2f} | {p95:.2f} | {p50 / base[0]:.2f}x | "
                          f"{(p50 / words) / (base[0] / base[1]):.2f}x |")


if __name__ == "__main__":
    main()
