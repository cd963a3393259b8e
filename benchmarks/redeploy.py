"""Redeploy cost with the compile cache: cold deploy, warm redeploy from the local cache, warm redeploy from a
shared S3 cache (a local S3 server, moto's, on 127.0.0.1; the local cache emptied first).

Networks, both deployed with ``--nn.precision=int8`` for the onnxruntime-python target:
- the MiniLM text_classification sample (all-MiniLM-L6-v2, real weights);
- a BERT-base-shaped text_classification network (12 layers, hidden 768, random weights, MiniLM's WordPiece
  vocabulary), wrapped into a .riva the way the samples package wraps its models.

The cold deploy runs with ``--cache s3://...``, so it includes publishing to both stores. Each deploy is in-process
after an untimed warm-up deploy (so imports are not charged to the first one).

    python benchmarks/redeploy.py [--models minilm,bert-base] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

BUCKET = "compile-cache"


def bert_base_export(out: Path) -> Path:
    """A BERT-base-shaped text_classification export (random weights, seeded)."""
    import torch
    from transformers import BertConfig, BertModel

    from servicemaker.samples import models
    from servicemaker.samples.export import nlp_export

    torch.manual_seed(0)
    encoder = BertModel(BertConfig(attn_implementation="eager"), add_pooling_layer=False).eval()
    task = models.TASKS["text_classification"]
    graph = models.export_onnx(models.TaskModel(encoder, task), task.outputs)
    vocab = (models.minilm_dir() / "vocab.txt").read_text(encoding="utf-8")
    return nlp_export(out, task.model_class, graph, vocab=vocab,
                      lm_config=json.dumps(encoder.config.to_diff_dict(), sort_keys=True),
                      labels={k: list(v) for k, v in task.labels.items()}, pretrained_model_name="bert-base-shaped",
                      max_seq_length=128)


def make_rmirs(work: Path, which: list[str]) -> dict[str, Path]:
    from servicemaker.build import BuildOptions, build
    from servicemaker.keys import ArchiveArg
    from servicemaker.samples import models

    out = {}
    for name in which:
        riva = work / f"{name}.riva"
        t = time.perf_counter()
        if name == "minilm":
            models.minilm_export("text_classification", riva)
        else:
            bert_base_export(riva)
        rmir = work / f"{name}.rmir"
        build(BuildOptions(pipeline="text_classification", output=ArchiveArg(rmir, None),
                           inputs=[ArchiveArg(riva, None)], overrides={"nn.precision": "int8"}))
        print(f"# {name}: export + svc-build {time.perf_counter() - t:.1f} s, RMIR {rmir.stat().st_size / 1e6:.1f} MB",
              flush=True)
        out[name] = rmir
    return out


def timed_deploy(rmir: Path, repo: Path, cache_dir: Path, url: str | None) -> tuple[float, str, float]:
    """(wall seconds, cache status of the network, network step seconds: lookup_cache + prepare_networks)."""
    from servicemaker.deploy import DeployOptions, deploy
    from servicemaker.keys import ArchiveArg

    os.environ["SERVICEMAKER_CACHE"] = str(cache_dir)
    t = time.perf_counter()
    result = deploy(DeployOptions(rmirs=[ArchiveArg(rmir, None)], repo=repo, target="onnxruntime-python",
                                  cache=url))
    wall = time.perf_counter() - t
    network = sum(s.seconds for s in result.steps if s.name in ("lookup_cache", "prepare_networks"))
    [status] = result.cache.values()
    return wall, status, network


def same_repository(a: Path, b: Path) -> bool:
    """Every file but deploy_status.json byte-identical (model.onnx, config.pbtxt, vocabularies, ...)."""
    def files(repo: Path) -> dict[str, bytes]:
        return {str(p.relative_to(repo)): p.read_bytes() for p in repo.rglob("*")
                if p.is_file() and p.name != "deploy_status.json"}
    return files(a) == files(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="minilm,bert-base")
    ap.add_argument("--keep", type=Path, help="keep the work folder here (default: a temporary one, removed)")
    args = ap.parse_args()
    which = [m.strip() for m in args.models.split(",") if m.strip()]
    from s3server import s3_server

    work = args.keep or Path(tempfile.mkdtemp(prefix="redeploy-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        rmirs = make_rmirs(work, which)
        with s3_server(buckets=(BUCKET,)):
            url = f"s3://{BUCKET}/servicemaker"
            warmup = work / "warmup"
            timed_deploy(rmirs[which[0]], warmup / "repo", warmup / "cache", None)   # imports, untimed
            for name, rmir in rmirs.items():
                base = work / name
                cold = timed_deploy(rmir, base / "cold", base / "build-server-cache", url)
                local = timed_deploy(rmir, base / "warm-local", base / "build-server-cache", url)
                shared = timed_deploy(rmir, base / "warm-s3", base / "empty-node-cache", url)
                assert (cold[1], local[1], shared[1]) == ("miss", "hit", "hit"), (cold, local, shared)
                same = all(same_repository(base / "cold", base / r) for r in ("warm-local", "warm-s3"))
                rows.append((name, cold, local, shared, same))
                print(f"# {name}: cold {cold[0]:.2f} s, warm local {local[0]:.2f} s, warm S3 {shared[0]:.2f} s",
                      flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print("| network (INT8) | cold deploy s | warm, local cache s | warm/cold | warm, S3 cache s | warm/cold | "
          "network step cold / local / S3 s | repository identical |")
    print("|---|---|---|---|---|---|---|---|")
    for name, cold, local, shared, same in rows:
        label = {"minilm": "MiniLM sample", "bert-base": "BERT-base shape"}.get(name, name)
        print(f"| {label} | {cold[0]:.2f} | {local[0]:.2f} | {local[0] / cold[0]:.1%} | {shared[0]:.2f} | "
              f"{shared[0] / cold[0]:.1%} | {cold[2]:.2f} / {local[2]:.2f} / {shared[2]:.2f} | {same} |")


if __name__ == "__main__":
    main()
