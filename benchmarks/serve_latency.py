"""Serving latency and throughput of the text_classification pipeline in a real Triton server, in both serving
layouts.

Deploys the MiniLM text_classification sample (``--target onnxruntime-python``, ``--precision`` fp32 or int8) twice
— the ensemble layout (tokenizer, network and decoder as three Python-backend models behind an ensemble) and the
fused layout (``--serving=fused``: one model) — unless ``--repo`` names a repository, starts Triton on 127.0.0.1
for each, and for each concurrency sends one-sentence requests from that many client threads for ``--seconds``.
The baseline, run in the same command, is the same pipeline (tokenizer → ONNX Runtime → label decoding, the very
handlers the repository holds) called in-process without Triton, one request at a time; the table gives, per
layout and concurrency: p50/p95 latency, throughput, p50 minus the baseline's p50, throughput over the baseline's,
and throughput over concurrency 1's.

    python benchmarks/serve_latency.py [--repo REPO] [--seconds 10] [--concurrency 1 8] [--protocol grpc]
                                       [--precision fp32|int8] [--layouts ensemble fused]

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


def deploy_sample(workdir: Path, layouts: list[str], precision: str) -> dict[str, Path]:
    from servicemaker.build import BuildOptions, build
    from servicemaker.deploy import DeployOptions, deploy
    from servicemaker.keys import ArchiveArg
    from servicemaker.samples import models

    export = models.minilm_export("text_classification", workdir / "tc.riva")
    rmir = workdir / "tc.rmir"
    build(BuildOptions(pipeline="text_classification", output=ArchiveArg(rmir, None), inputs=[ArchiveArg(export, None)],
                       domain_name="weather"))
    repos = {}
    for layout in layouts:
        t0 = time.perf_counter()
        repos[layout] = workdir / f"repo-{layout}"
        deploy(DeployOptions(rmirs=[ArchiveArg(rmir, None)], repo=repos[layout], target="onnxruntime-python",
                             serving=layout, overrides={"nn.precision": precision}))
        print(f"deploy of the MiniLM sample ({precision}, {layout} layout): {time.perf_counter() - t0:.2f} s")
    return repos


def in_process(repo: Path, ensemble: str, seconds: float) -> list[float]:
    """The baseline: the repository's own handlers chained in this process, one request at a time."""
    from servicemaker.client import ensembles  # noqa: F401 - same import cost either way
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cfg = text_format.Parse((repo / ensemble / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    if cfg.platform != "ensemble":  # the fused layout: the chain's steps are in the model's parameters
        sys.path.insert(0, str(repo / ensemble / "1"))
        import svc_handlers

        chain = [(svc_handlers.create(s["handler"], str(repo / ensemble / "1" / s["folder"]), s["params"]),
                  Step(s["inputs"], s["outputs"])) for s in json.loads(cfg.parameters["chain"].string_value)]
    else:
        sys.path.insert(0, str(repo / cfg.ensemble_scheduling.step[0].model_name / "1"))
        import svc_handlers

        chain = []
        for step in cfg.ensemble_scheduling.step:
            model = text_format.Parse((repo / step.model_name / "config.pbtxt").read_text(),
                                      model_config_pb2.ModelConfig())
            params = {k: v.string_value for k, v in model.parameters.items()}
            chain.append((svc_handlers.create(params.pop("handler"), str(repo / step.model_name / "1"), params),
                          Step(dict(step.input_map), dict(step.output_map))))
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


class Step:
    def __init__(self, input_map: dict[str, str], output_map: dict[str, str]) -> None:
        self.input_map, self.output_map = input_map, output_map


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
    parser.add_argument("--model", default="riva_text_classification_weather", help="the pipeline to query")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    parser.add_argument("--layouts", nargs="+", choices=("ensemble", "fused"), default=["ensemble", "fused"])
    args = parser.parse_args()

    from servicemaker.client import connect, infer
    from servicemaker.serve import TritonServer

    with tempfile.TemporaryDirectory() as tmp:
        repos = {"given": args.repo} if args.repo else deploy_sample(Path(tmp), args.layouts, args.precision)
        base = in_process(next(iter(repos.values())), args.model, args.seconds)
        base_p50 = 1e3 * statistics.median(base)
        base_rps = len(base) / sum(base)
        print(f"\nbaseline (the same handlers in-process, one request at a time, no Triton): p50 {base_p50:.2f} ms, "
              f"{base_rps:.1f} req/s\n")
        print("| layout | concurrency | requests | req/s | p50 ms | p95 ms | p50 - in-process p50 ms | "
              "req/s / in-process | req/s / concurrency 1 | server p50 ms |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for layout, repo in repos.items():
            with TritonServer(repo) as server:
                warm = connect(server.http_url)
                for s in SENTENCES * 3:
                    infer(warm, args.model, {"TEXT": [s]})
                first = None
                for c in args.concurrency:
                    r = load(server, args.model, c, args.seconds, args.protocol)
                    first = first or r["throughput_rps"]
                    server_p50 = f"{r['server_p50_ms']:.2f}" if r["server_p50_ms"] is not None else "n/a"
                    print(f"| {layout} | {c} | {r['requests']} | {r['throughput_rps']:.1f} | "
                          f"{r['client_p50_ms']:.2f} | {r['client_p95_ms']:.2f} | "
                          f"{r['client_p50_ms'] - base_p50:+.2f} | {r['throughput_rps'] / base_rps:.2f} | "
                          f"{r['throughput_rps'] / first:.2f} | {server_p50} |", flush=True)


if __name__ == "__main__":
    main()
