"""Bundling throughput and peak memory of svc-build on a large export (not a test).

    python benchmarks/bundle_throughput.py [--gib 1.0] [--work DIR]

Writes an export whose ONNX artifact holds ``--gib`` GiB of float32 "weights" (streamed, never in memory), then,
in the same command, times (a) a baseline that only streams the same bytes through gzip decompression and
gzip level-1 compression, and (b) ``svc-build`` in a subprocess, reading that subprocess's peak RSS. Prints
throughput, the ratio b/a, and peak RSS as a fraction of the largest artifact.
"""

from __future__ import annotations

import argparse
import gzip
import io
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from servicemaker.eff import EffReader, EffWriter

CHUNK = 1 << 20


class Weights(io.RawIOBase):
    """``size`` bytes of float32 normal noise, generated chunk by chunk."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.rng = np.random.default_rng(0)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = min(self.left, CHUNK if n is None or n < 0 else n)
        self.left -= n
        return self.rng.standard_normal((n + 3) // 4, dtype=np.float32).tobytes()[:n]


def make_input(path: Path, size: int) -> None:
    cfg = (b"tokenizer: {vocab_file: 'nemo:vocab.txt'}\nlanguage_model: {pretrained_model_name: big, "
           b"config_file: 'nemo:lm.json'}\ndataset: {max_seq_length: 128}\n")
    with EffWriter(path, force=True) as w:
        w.add_stream("model_graph.onnx", Weights(size), size, {"onnx": True})
        w.add_bytes("model_config.yaml", cfg)
        w.add_bytes("vocab.txt", b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
        w.add_bytes("lm.json", b"{}")
        w.commit({"format_version": 3, "obj_cls": "nemo.collections.nlp.models.TextClassificationModel",
                  "min_nemo_version": "1.3"})


def baseline(src: Path, dst: Path) -> float:
    started = time.perf_counter()
    with gzip.open(src, "rb") as fin, open(dst, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1) as fout:
        while chunk := fin.read(CHUNK):
            fout.write(chunk)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="svc-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    size = int(args.gib * (1 << 30))
    src = work / "big.riva"
    t = time.perf_counter()
    make_input(src, size)
    print(f"input: {src.stat().st_size / 1e6:.0f} MB archive, artifact {size / 1e6:.0f} MB "
          f"(written in {time.perf_counter() - t:.1f} s)")
    base = baseline(src, work / "baseline.gz")
    (work / "baseline.gz").unlink()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "servicemaker.cli.build_main", "text_classification", str(work / "big.rmir"),
                    str(src), "-f", "-q"], check=True)
    took = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    with EffReader(work / "big.rmir") as r:
        assert r.artifacts["nn-model_graph.onnx"]["size"] == size
    print(f"baseline gzip read+write:  {base:7.1f} s  {size / base / 1e6:6.1f} MB/s")
    print(f"svc-build:                 {took:7.1f} s  {size / took / 1e6:6.1f} MB/s  (ratio to baseline {took / base:.2f})")
    print(f"svc-build peak RSS:        {peak / 1e6:7.1f} MB  ({peak / size:.3f} of the largest artifact)")
    if not args.work:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()


if __name__ == "__main__":
    main()
