"""Speech recognition serving benchmark: offline RTFx and streaming capacity of the deployed sample in a real Triton.

Builds the trained speech_recognition sample offline (``svc-build speech_recognition --offline``) and streaming,
deploys both (``--target onnxruntime-python``), starts Triton on 127.0.0.1, and in one command measures:

- offline RTFx (audio seconds per wall second) on held-out utterances of different lengths at concurrency 1 and 8
  (client threads sending whole utterances), against the repository's own handlers chained in-process (1 at a time,
  batch 8) and sherpa-onnx's offline recognizer on the same exported acoustic model (1 at a time, 8 caller threads,
  batch 8); runs interleaved over ``--rounds``, medians reported, with each system's WER;
- streaming capacity: N streams send 160 ms chunks in real time (each waits until its next chunk is due); latency
  counts from when a chunk is due; a level passes with p95 < 160 ms and no errors; finals are compared with offline.

    python benchmarks/asr.py [--seconds 12] [--rounds 3] [--streams 1,2,4,8,16,32,48,64] [--protocol http|grpc]
                             [--riva X.riva] [--quick]

Numbers depend on the machine; compare only ratios taken in one run.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RATE = 16000
Run = Callable[[list], list]  # a batch of audio arrays -> their transcripts


def deploy_sample(workdir: Path, given: Path | None) -> tuple[Path, Path]:
    """The trained sample (or a given .riva) built offline and streaming, and deployed: (repo, .riva)."""
    from servicemaker.samples.asr import asr_export

    from servicemaker.build import BuildOptions, build
    from servicemaker.deploy import DeployOptions, deploy
    from servicemaker.keys import ArchiveArg

    riva = given or asr_export(workdir / "speech_recognition.riva")  # trains once (minutes), then cached
    rmirs = []
    for pipeline in ("speech_recognition_offline", "speech_recognition"):  # = svc-build ... [--offline]
        out = workdir / f"{pipeline}.rmir"
        build(BuildOptions(pipeline=pipeline, output=ArchiveArg(out, None), inputs=[ArchiveArg(riva, None)]))
        rmirs.append(ArchiveArg(out, None))
    deploy(DeployOptions(rmirs=rmirs, repo=workdir / "repo", target="onnxruntime-python"))
    return workdir / "repo", riva


# --- the three systems ------------------------------------------------------------------------------------------------

def in_process(repo: Path, ensemble: str) -> Run:
    """The repository's own handlers chained in this process, every step fed a batch of requests as Triton's dynamic
    batcher would; ORT thread spinning off (idle pools would steal the cores from the other systems)."""
    import onnxruntime as ort
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    def config(name: str):
        return text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())

    steps = config(ensemble).ensemble_scheduling.step
    sys.path.insert(0, str(repo / steps[0].model_name / "1"))
    import svc_handlers

    chain = []
    for step in steps:
        params = {k: v.string_value for k, v in config(step.model_name).parameters.items()}
        handler = svc_handlers.create(params.pop("handler"), str(repo / step.model_name / "1"), params)
        if hasattr(handler, "session"):
            so = ort.SessionOptions()
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
            handler.session = ort.InferenceSession(handler.file("model"), so, providers=["CPUExecutionProvider"])
        chain.append((handler, step))

    def run(audios: list) -> list:
        tensors = [{"AUDIO_SIGNAL": a[None], "SAMPLE_RATE": np.array([[RATE]], np.int32)} for a in audios]
        for handler, step in chain:
            outs = handler.batch([{k: t[v] for k, v in step.input_map.items()} for t in tensors])
            for t, out in zip(tensors, outs):
                if isinstance(out, Exception):
                    raise out
                t.update({step.output_map[k]: v for k, v in out.items() if k in step.output_map})
        return [t["TRANSCRIPT"].reshape(-1)[0].decode() for t in tensors]
    return run


def sherpa_model(riva: Path, folder: Path) -> tuple[Path, Path, int]:
    """A copy of the .riva's acoustic model with sherpa-onnx's NeMo CTC metadata, and its tokens.txt."""
    import onnx
    import onnxruntime as ort
    import yaml

    from servicemaker.eff.reader import EffReader

    with EffReader(riva) as reader:
        graph, cfg = reader.read_bytes("model_graph.onnx"), yaml.safe_load(reader.read_text("model_config.yaml"))
    labels, pre = cfg["decoder"]["vocabulary"], cfg.get("preprocessor", {})
    n_mels = int(pre.get("features", 64))
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    frames = 400  # the subsampling factor, measured
    feeds = {"audio_signal": np.zeros((1, n_mels, frames), np.float32), "length": np.array([frames], np.int64)}
    (out,) = session.run(["logprobs"], {i.name: feeds[i.name] for i in session.get_inputs()})
    model = onnx.load_from_string(graph)
    if "length" not in feeds.keys() & {i.name for i in session.get_inputs()}:  # sherpa-onnx always feeds it
        model.graph.input.append(onnx.helper.make_tensor_value_info("length", onnx.TensorProto.INT64, ["batch"]))
    meta = {"vocab_size": len(labels) + 1, "subsampling_factor": round(frames / out.shape[1]),
            "normalize_type": pre.get("normalize", "per_feature").replace("NA", ""), "model_type": "EncDecCTCModel",
            "version": "1", "model_author": "servicemaker sample", "comment": "model_graph.onnx of the .riva"}
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=str(value))
    onnx.save(model, folder / "model.onnx")
    tokens = [("▁" if s == " " else s) for s in labels] + ["<blk>"]  # sherpa-onnx reads ▁ as a space
    (folder / "tokens.txt").write_text("".join(f"{s} {i}\n" for i, s in enumerate(tokens)), encoding="utf-8")
    return folder / "model.onnx", folder / "tokens.txt", n_mels


def sherpa(model: Path, tokens: Path, n_mels: int, threads: int) -> Run:
    import sherpa_onnx

    rec = sherpa_onnx.OfflineRecognizer.from_nemo_ctc(str(model), str(tokens), num_threads=threads,
                                                      sample_rate=RATE, feature_dim=n_mels)

    def run(audios: list) -> list:
        streams = [rec.create_stream() for _ in audios]
        for s, a in zip(streams, audios):
            s.accept_waveform(RATE, a)
        rec.decode_streams(streams) if len(streams) > 1 else rec.decode_stream(streams[0])
        return [" ".join(s.result.text.split()) for s in streams]
    return run


def triton(url: str, protocol: str, ensemble: str) -> Callable[[], Run]:
    from servicemaker.client import connect, transcribe

    def make() -> Run:
        client = connect(url, protocol)
        return lambda audios: [transcribe(client, ensemble, a, RATE, protocol)["TRANSCRIPT"] for a in audios]
    return make


# --- offline ----------------------------------------------------------------------------------------------------------

def measure(make: Callable[[], Run], utts: list, threads: int, batch: int, seconds: float) -> tuple[float, dict]:
    """RTFx over at least one pass of ``utts`` and ``seconds``: ``threads`` callers, ``batch`` utterances per call;
    the transcripts of the first pass."""
    counter, lock, texts, audio, errors = itertools.count(), threading.Lock(), {}, [0.0] * threads, []
    stop = time.perf_counter() + seconds

    def worker(k: int, run: Run) -> None:
        while not errors:
            with lock:
                idx = [next(counter) for _ in range(batch)]
            if idx[0] >= len(utts) and time.perf_counter() > stop:
                return
            try:
                got = run([utts[i % len(utts)][1] for i in idx])
            except Exception as err:  # noqa: BLE001 - re-raised in the caller
                errors.append(err)
                return
            for i, text in zip(idx, got):
                texts.setdefault(i, text)
            audio[k] += sum(len(utts[i % len(utts)][1]) for i in idx) / RATE

    runs = [make() for _ in range(threads)]
    started = time.perf_counter()
    run_threads(worker, list(enumerate(runs)))
    if errors:
        raise errors[0]
    return sum(audio) / (time.perf_counter() - started), {i: t for i, t in texts.items() if i < len(utts)}


def server_stats(url: str) -> dict[str, np.ndarray]:
    """Triton's cumulative statistics per model: requests, executions, queue ns, compute ns."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://{url}/v2/models/stats", timeout=10) as resp:
        doc = json.load(resp)
    return {m["name"]: np.array([m["inference_count"], m["execution_count"], m["inference_stats"]["queue"]["ns"],
                                 m["inference_stats"]["compute_infer"]["ns"]], np.float64) for m in doc["model_stats"]}


def run_threads(target: Callable, args: list) -> None:
    pool = [threading.Thread(target=target, args=a) for a in args]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def p95(values: list[float]) -> float:
    return sorted(values)[int(0.95 * (len(values) - 1))] if values else float("inf")


# --- streaming --------------------------------------------------------------------------------------------------------

SEQUENCE_IDS = itertools.count(1)


def stream_level(url: str, protocol: str, ensemble: str, utts: list, refs: list[str], streams: int,
                 seconds: float, chunk_s: float) -> dict:
    """``streams`` clients, each playing utterances back to back in real time for ``seconds``."""
    import tritonclient.grpc
    import tritonclient.http

    from servicemaker.client import connect

    module = tritonclient.http if protocol == "http" else tritonclient.grpc
    step = round(chunk_s * RATE)
    latencies: list[list[float]] = [[] for _ in range(streams)]
    finals: list[list[float]] = [[] for _ in range(streams)]
    mismatches: list[tuple[str, str]] = []
    errors: list[str] = []
    stop = time.perf_counter() + seconds

    def request(chunk: np.ndarray) -> list:
        tensors = []
        for name, array, dtype in (("AUDIO_SIGNAL", chunk[None], "FP32"),
                                   ("SAMPLE_RATE", np.array([[RATE]], np.int32), "INT32")):
            tensors.append(module.InferInput(name, list(array.shape), dtype))
            tensors[-1].set_data_from_numpy(np.ascontiguousarray(array))
        return tensors

    def worker(k: int) -> None:
        client = connect(url, protocol)
        time.sleep(k * chunk_s / streams)  # streams start spread over one chunk period
        j = k
        while time.perf_counter() < stop:
            i, j = j % len(utts), j + streams
            audio, seq, t0 = utts[i][1], next(SEQUENCE_IDS), time.perf_counter()
            starts = list(range(0, len(audio), step))
            try:
                for n, s in enumerate(starts):
                    due = t0 + min(s + step, len(audio)) / RATE  # when the chunk's last sample exists
                    time.sleep(max(0.0, due - time.perf_counter()))
                    result = client.infer(ensemble, request(audio[s:s + step]), sequence_id=seq,
                                          sequence_start=n == 0, sequence_end=n == len(starts) - 1)
                    latencies[k].append(time.perf_counter() - due)
            except Exception as err:  # noqa: BLE001 - counted; the stream goes on with its next utterance
                errors.append(f"{len(audio) / RATE:.2f} s utterance, chunk {n + 1}/{len(starts)}: {err}")
                continue
            finals[k].append(latencies[k][-1])
            text = result.as_numpy("TRANSCRIPT").reshape(-1)[0].decode()
            if text != refs[i]:
                mismatches.append((refs[i], text))

    run_threads(worker, [(k,) for k in range(streams)])
    flat, fin = [x for r in latencies for x in r], [x for r in finals for x in r]
    return {"streams": streams, "chunks": len(flat), "utterances": len(fin), "p50": statistics.median(flat or [0]),
            "p95": p95(flat), "final_p95": p95(fin), "mismatches": mismatches, "errors": errors,
            "pass": p95(flat) < chunk_s and not errors}


# --- main -------------------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0,
                        help="per streaming level; per offline system over all rounds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved offline rounds (medians reported)")
    parser.add_argument("--streams", default="1,2,4,8,16,32,48,64", help="streaming levels, comma-separated")
    parser.add_argument("--utterances", type=int, default=40)
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--threads", type=int, default=2, help="sherpa-onnx's num_threads (= the cores)")
    parser.add_argument("--riva", type=Path, help="a NeMo CTC .riva export to use instead of the trained sample")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.utterances, args.streams = 3.0, 1, 12, "1,8"
    levels, chunk_s = [int(x) for x in args.streams.split(",")], 0.16

    from servicemaker.samples.asr import held_out_utterances

    from servicemaker.client import ensemble_signatures
    from servicemaker.serve import TritonServer

    work = Path(tempfile.mkdtemp(prefix="svc-asr-bench-"))
    triton_server = None
    try:
        t0 = time.perf_counter()
        repo, riva = deploy_sample(work, args.riva)
        print(f"sample built and deployed in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        names = {("IS_FINAL" in outs): n for n, (ins, outs) in ensemble_signatures(repo).items()}
        utts = held_out_utterances(args.utterances)
        refs, lengths = [text for text, _ in utts], [len(a) / RATE for _, a in utts]
        (work / "sherpa").mkdir()
        local, sherpa_run = in_process(repo, names[False]), sherpa(*sherpa_model(riva, work / "sherpa"), args.threads)
        triton_server = TritonServer(repo).start().wait_ready()
        server_url = triton_server.http_url
        url = {"http": server_url, "grpc": triton_server.grpc_url}[args.protocol]
        ours = triton(url, args.protocol, names[False])
        systems = {  # name: (makes a runner per thread, threads, utterances per call)
            "ours (Triton), concurrency 1": (ours, 1, 1), "ours (Triton), concurrency 8": (ours, 8, 1),
            "in-process handlers, 1 at a time": (lambda: local, 1, 1),
            "in-process handlers, batch 8": (lambda: local, 1, 8),
            "sherpa-onnx, 1 at a time": (lambda: sherpa_run, 1, 1),
            "sherpa-onnx, 8 caller threads": (lambda: sherpa_run, 8, 1),
            "sherpa-onnx, batch 8": (lambda: sherpa_run, 1, 8)}
        for make, threads, batch in systems.values():  # warm-up
            measure(make, utts[:8], threads, batch, 0.0)
        rtfx: dict[str, list[float]] = {name: [] for name in systems}
        texts: dict[str, dict] = {}
        server: dict[str, dict[str, np.ndarray]] = {}  # Triton's statistics over our runs, per concurrency
        for r in range(args.rounds):
            for name, (make, threads, batch) in systems.items():
                before = server_stats(server_url)
                value, got = measure(make, utts, threads, batch, args.seconds / args.rounds)
                if make is ours:
                    server[name] = {m: server.get(name, {}).get(m, 0) + d - before[m]
                                    for m, d in server_stats(server_url).items()}
                rtfx[name].append(value)
                texts.setdefault(name, got)
                print(f"round {r + 1}: {name}: RTFx {value:.1f}", file=sys.stderr)
        hyps = {name: [t[i] for i in range(len(utts))] for name, t in texts.items()}
        streaming = []
        for n in levels:
            res = stream_level(url, args.protocol, names[True], utts, hyps["ours (Triton), concurrency 1"], n,
                               args.seconds, chunk_s)
            streaming.append(res)
            print(f"streams {n}: p50 {1e3 * res['p50']:.0f} ms, p95 {1e3 * res['p95']:.0f} ms, "
                  f"{len(res['errors'])} errors", file=sys.stderr)
            if not res["pass"] and res["p95"] > 4 * chunk_s:
                break  # far over: higher levels only queue more
    finally:
        if triton_server is not None:
            triton_server.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(args, utts, refs, lengths, rtfx, hyps, server, streaming, chunk_s)


def report(args, utts, refs, lengths, rtfx, hyps, server, streaming, chunk_s) -> None:
    from servicemaker.samples.asr import word_error_rate
    med = {name: statistics.median(v) for name, v in rtfx.items()}
    print(f"\n## Offline RTFx ({args.protocol}; {len(utts)} held-out utterances, {sum(lengths):.1f} s of audio, "
          f"{min(lengths):.2f}-{max(lengths):.2f} s each; median of {args.rounds} interleaved rounds)\n")
    print("| system | RTFx (median) | per round | WER |\n|---|---|---|---|")
    for name, values in rtfx.items():
        print(f"| {name} | {med[name]:.1f} | {', '.join(f'{v:.1f}' for v in values)} | "
              f"{word_error_rate(refs, hyps[name]):.1%} |")
    sherpa8 = max(med["sherpa-onnx, 8 caller threads"], med["sherpa-onnx, batch 8"])
    print("\n| concurrency | ours RTFx | in-process RTFx | ours / in-process | sherpa-onnx RTFx | ours / sherpa-onnx |"
          "\n|---|---|---|---|---|---|")
    for c, base, peer in ((1, med["in-process handlers, 1 at a time"], med["sherpa-onnx, 1 at a time"]),
                          (8, med["in-process handlers, batch 8"], sherpa8)):
        ours = med[f"ours (Triton), concurrency {c}"]
        print(f"| {c} | {ours:.1f} | {base:.1f} | {ours / base:.2f}x | {peer:.1f} | {ours / peer:.2f}x |")
    print(f"\nThreads: ours = one Triton instance per model; the network's ONNX Runtime session has Triton's "
          f"default intra-op threads (= the {args.threads} cores); in-process = the same handlers and session "
          f"settings, thread spinning off; sherpa-onnx num_threads={args.threads} (8 caller threads share one "
          "recognizer). At concurrency 8, in-process is its batch-8 run and sherpa-onnx its better 8-way mode.\n"
          "Features: ours fuses NeMo's featurizer (20 ms window, n_fft 512, log(x + 2^-24), per_feature) in front "
          "of the model; sherpa-onnx computes its own with kaldi-native-fbank (25 ms window, n_fft 512, "
          "log(max(x, eps)), its own framing and per_feature statistics), so its WER can differ for that alone.")
    print("\nServer side (Triton's statistics over all our offline rounds): per model, requests per execution "
          "(batch), queue ms per request, compute ms per execution.\n\n| model | " +
          " | ".join(f"{name}: batch, queue, compute" for name in server) + " |\n|---|" + "---|" * len(server))
    for model in sorted({m for per in server.values() for m, d in per.items() if d[1]}):
        cells = [f"{d[0] / max(d[1], 1):.1f}, {d[2] / max(d[0], 1) / 1e6:.1f}, {d[3] / max(d[1], 1) / 1e6:.1f}"
                 for d in (per[model] for per in server.values())]
        print(f"| {model} | " + " | ".join(cells) + " |")
    print(f"\n## Streaming ({args.protocol}; {int(chunk_s * 1e3)} ms chunks sent in real time; {args.seconds:.0f} s "
          "per level; latency counted from when a chunk is due)\n")
    print("| streams | chunks | utterances | p50 ms | p95 ms | p95 of final chunks ms | errors | final != offline "
          "| p95 < 160 ms, no errors |\n|---|---|---|---|---|---|---|---|---|")
    for r in streaming:
        print(f"| {r['streams']} | {r['chunks']} | {r['utterances']} | {1e3 * r['p50']:.0f} | {1e3 * r['p95']:.0f} "
              f"| {1e3 * r['final_p95']:.0f} | {len(r['errors'])} | {len(r['mismatches'])} | "
              f"{'yes' if r['pass'] else 'no'} |")
    for line in sorted({e for r in streaming for e in r["errors"]})[:3]:
        print(f"- error: {line[:300]}")
    for ref, got in sorted({m for r in streaming for m in r["mismatches"]})[:5]:
        print(f"- mismatch: offline {ref!r}, streaming {got!r}")
    passing = max([r["streams"] for r in streaming if r["pass"]], default=0)
    c8 = med["ours (Triton), concurrency 8"] / sherpa8
    print(f"\nGoal, offline RTFx at concurrency 8 >= 1.0x sherpa-onnx: {'MET' if c8 >= 1.0 else 'NOT MET'} "
          f"({c8:.2f}x)")
    print(f"Goal, >= 8 concurrent streams: {'MET' if passing >= 8 else 'NOT MET'} (largest passing level: {passing})")


if __name__ == "__main__":
    main()
