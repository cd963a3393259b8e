"""Serving latency and throughput of a deployed text_classification ensemble in a real Triton server.

Deploys the MiniLM text_classification sample (``--target onnxruntime-python``) unless ``--repo`` names a
repository, starts Triton on 127.0.0.1, and for each concurrency sends one-sentence requests from that many client
threads for ``--seconds``. It prints, per concurrency: client-side p50/p95 latency, throughput, and the server-side
mean and p50 request time from Triton's statistics API. The baseline, run in the same command, is the same
pipeline (tokenizer → ONNX Runtime → label decoding, the very handlers the repository holds) called in-process
without Triton; ratios are against it.

    python benchmarks/serve_latency.py [--repo REPO] [--seconds 10] [--concurrency 1 8] [--protocol http]

Numbers depend on the machine; compare only ratios taken in one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

SENTENCES = ["is it going to snow in berlin tomorrow", "put on a rock song", "did the lakers win their match",
             "will it be sunny this weekend", "play something relaxing", "who scored in the final"]


def deploy_sample(workdir: Path) -> tuple[Path, str]:
    from servicemaker.build import BuildOptions, build
    from servicemaker.deploy import DeployOptions, deploy
    from servicemaker.keys import ArchiveArg
    from servicemaker.samples import models

    export = models.minilm_export("text_classification", workdir / "tc.riva")
    rmir = workdir / "tc.rmir"
    build(BuildOptions(pipeline="text_classification", output=ArchiveArg(rmir, None), inputs=[ArchiveArg(export, None)],
                       domain_name="weather"))
    t0 = time.perf_counter()
    deploy(DeployOptions(rmirs=[ArchiveArg(rmir, None)], repo=workdir / "repo", target="onnxruntime-python"))
    print(f"deploy of the MiniLM sample: {time.perf_counter() - t0:.2f} s")
    return workdir / "repo", "riva_text_classification_weather"


def in_process(repo: Path, ensemble: str, seconds: float) -> list[float]:
    """The baseline: the repository's own handlers chained in this process, one request at a time."""
    from servicemaker.client import ensembles  # noqa: F401 - same import cost either way
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cfg = text_format.Parse((repo / ensemble / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    sys.path.insert(0, str(repo / cfg.ensemble_scheduling.step[0].model_name / "1"))
    import svc_handlers

    chain = []
    for step in cfg.ensemble_scheduling.step:
        model = text_format.Parse((repo / step.model_name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        params = {k: v.string_value for k, v in model.parameters.items()}
        chain.append((svc_handlers.create(params.pop("handler"), str(repo / step.model_name / "1"), params), step))
    latencies = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        tensors = {"TEXT": np.array([[SENTENCES[i % len(SENTENCES)].encode()]], dtype=object)}
        for handler, step in chain:
            out = handler({k: tensors[v] for k, v in step.input_map.items()})
            tensors.update({step.output_map[k]: v for k, v in out.items() if k in step.output_map})
        latencies.append(time.perf_counter() - t0)
        i += 1
    return latencies


def stats(url: str, model: str) -> tuple[int, int]:
    with urllib.request.urlopen(f"http://{url}/v2/models/{model}/stats", timeout=10) as resp:
        doc = json.load(resp)
    success = doc["model_stats"][0]["inference_stats"]["success"]
    return int(success["count"]), int(success["ns"])


def load(server, ensemble: str, concurrency: int, seconds: float, protocol: str) -> dict:
    from servicemaker.client import connect, infer

    url = server.http_url if protocol == "http" else server.grpc_url
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    server_ns: list[int] = []
    stop = time.perf_counter() + seconds

    def worker(k: int) -> None:
        client = connect(url, protocol)
        i = k
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            infer(client, ensemble, {"TEXT": [SENTENCES[i % len(SENTENCES)]]}, protocol)
            latencies[k].append(time.perf_counter() - t0)
            i += 1

    count0, ns0 = stats(server.http_url, ensemble)
    if concurrency == 1:  # server-side time of every single request: a statistics read after each one
        client = connect(url, protocol)
        i = 0
        started = time.perf_counter()
        last = (count0, ns0)
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            infer(client, ensemble, {"TEXT": [SENTENCES[i % len(SENTENCES)]]}, protocol)
            latencies[0].append(time.perf_counter() - t0)
            now = stats(server.http_url, ensemble)
            server_ns.append(now[1] - last[1])
            last = now
            i += 1
        elapsed = time.perf_counter() - started
    else:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
    count1, ns1 = stats(server.http_url, ensemble)
    flat = sorted(x for row in latencies for x in row)
    return {
        "concurrency": concurrency,
        "requests": len(flat),
        "throughput_rps": len(flat) / elapsed,
        "client_p50_ms": 1e3 * statistics.median(flat),
        "client_p95_ms": 1e3 * flat[int(0.95 * (len(flat) - 1))],
        "server_mean_ms": (ns1 - ns0) / max(1, count1 - count0) / 1e6,
        "server_p50_ms": statistics.median(server_ns) / 1e6 if server_ns else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, help="an existing repository (default: deploy the MiniLM sample)")
    parser.add_argument("--model", default="riva_text_classification_weather", help="the ensemble to query")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    args = parser.parse_args()

    from servicemaker.serve import TritonServer

    with tempfile.TemporaryDirectory() as tmp:
        repo, ensemble = (args.repo, args.model) if args.repo else deploy_sample(Path(tmp))
        base = in_process(repo, ensemble, args.seconds)
        base_p50 = 1e3 * statistics.median(base)
        base_rps = len(base) / sum(base)
        print(f"baseline (in-process handlers, no Triton): p50 {base_p50:.2f} ms, {base_rps:.1f} req/s")
        with TritonServer(repo) as server:
            from servicemaker.client import connect, infer
            warm = connect(server.http_url)
            for s in SENTENCES * 3:
                infer(warm, ensemble, {"TEXT": [s]})
            for c in args.concurrency:
                r = load(server, ensemble, c, args.seconds, args.protocol)
                server_p50 = f"{r['server_p50_ms']:.2f} ms" if r["server_p50_ms"] is not None else "n/a"
                print(f"triton {args.protocol} concurrency {c}: {r['requests']} requests, "
                      f"{r['throughput_rps']:.1f} req/s ({r['throughput_rps'] / base_rps:.2f}x baseline), "
                      f"client p50 {r['client_p50_ms']:.2f} ms ({r['client_p50_ms'] / base_p50:.2f}x baseline), "
                      f"p95 {r['client_p95_ms']:.2f} ms, server mean {r['server_mean_ms']:.2f} ms, "
                      f"server p50 {server_p50}")


if __name__ == "__main__":
    main()
