"""Network-step latency on the CPU: (a) the FP32 export, (b) ONNX Runtime's transformers optimizer +
quantize_dynamic (the strongest off-the-shelf recipe), (c) servicemaker's compiler (fused + INT8 Q/DQ).

Models: the MiniLM sample (all-MiniLM-L6-v2, real weights; outputs the text_classification logits and the
mean-pooled sentence embedding) and a BERT-base-shaped encoder (12 layers, hidden 768, random weights; outputs the
mean-pooled embedding). Sequence 128, batch 1 and 8, the same ONNX Runtime thread settings for every variant.
Accuracy of (b) and (c) is measured against (a) on the 48 sample sentences servicemaker ships (not the calibration
set): cosine of the outputs and top-1 agreement of the logits.

    python benchmarks/optimize_cpu.py [--models minilm,bert-base] [--runs 30] [--threads 2] [--fusion-ops auto]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

SEQ = 128


def _export(model, path: Path, outputs: list[str]) -> None:
    import torch

    ids = torch.ones(2, 16, dtype=torch.long)
    names = ["input_ids", "token_type_ids", "attention_mask"]
    axes = {n: {0: "batch", 1: "seq"} for n in names}
    axes.update({o: {0: "batch"} for o in outputs})
    with torch.no_grad():
        torch.onnx.export(model, (ids, torch.zeros_like(ids), torch.ones_like(ids)), str(path), input_names=names,
                          output_names=outputs, dynamic_axes=axes, opset_version=17, dynamo=False)


def export_models(work: Path, which: list[str]) -> dict[str, tuple[Path, int, int]]:
    """name → (onnx path, heads, hidden)."""
    import warnings

    import torch
    from torch import nn

    from servicemaker.samples.models import PROTOTYPES, TASKS, TaskModel, load_minilm, prototypes

    warnings.filterwarnings("ignore")

    def pooled(encoder, ids, types, mask):
        h = encoder(input_ids=ids, token_type_ids=types, attention_mask=mask)[0]
        m = mask.unsqueeze(-1).to(h.dtype)
        return nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1.0), dim=-1)

    class Sample(nn.Module):  # the MiniLM text_classification sample network, plus its embedding
        def __init__(self, encoder, tokenizer):
            super().__init__()
            self.task = TaskModel(encoder, TASKS["text_classification"],
                                  prototypes(encoder, tokenizer, tuple(PROTOTYPES)))

        def forward(self, ids, types, mask):
            emb = pooled(self.task.encoder, ids, types, mask)
            return self.task.cls(emb), emb

    class Pooled(nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, ids, types, mask):
            return pooled(self.encoder, ids, types, mask)

    out = {}
    if "minilm" in which:
        encoder, tokenizer = load_minilm()
        _export(Sample(encoder, tokenizer).eval(), work / "minilm.onnx", ["logits", "embedding"])
        out["minilm"] = (work / "minilm.onnx", 12, 384)
    if "bert-base" in which:
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        cfg = BertConfig(attn_implementation="eager")  # 12 layers, hidden 768, 12 heads, vocab 30522
        _export(Pooled(BertModel(cfg, add_pooling_layer=False).eval()), work / "bert-base.onnx", ["embedding"])
        out["bert-base"] = (work / "bert-base.onnx", 12, 768)
    return out


def feeds(texts: list[str], batch: int, pad_to: int | None = SEQ) -> list[dict[str, np.ndarray]]:
    from servicemaker.deploy.feeds import tokenized
    from servicemaker.runtime.nlp import Tokenize
    from servicemaker.samples.models import minilm_dir

    tok = Tokenize(str(minilm_dir()), {"vocab": "vocab.txt", "lower_case": "true", "max_seq_length": str(SEQ)})
    out = tokenized(texts, tok, batch=batch)
    if pad_to:
        for f in out:
            for k, v in f.items():
                f[k] = np.pad(v, ((0, 0), (0, pad_to - v.shape[1])))
    return out


def time_models(paths: dict[str, Path], feed: dict[str, np.ndarray], threads: int, runs: int) -> dict[str, float]:
    """Median ms per variant; runs are interleaved (a, b, c, a, b, c, ...) so machine noise hits all alike."""
    from servicemaker.deploy.optimize import session

    sessions = {k: session(p, threads) for k, p in paths.items()}
    feeds_ = {k: {n: v for n, v in feed.items() if n in {i.name for i in s.get_inputs()}} for k, s in sessions.items()}
    for k, sess in sessions.items():
        for _ in range(3):
            sess.run(None, feeds_[k])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for k, sess in sessions.items():
            t = time.perf_counter()
            sess.run(None, feeds_[k])
            times[k].append((time.perf_counter() - t) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def recipe_b(src: Path, dst: Path, heads: int, hidden: int) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    opt = optimizer.optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden)
    fused = dst.with_suffix(".fused.onnx")
    opt.save_model_to_file(str(fused))
    quantize_dynamic(str(fused), str(dst), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def recipe_c(src: Path, dst: Path, work: Path, threads: int, calib, samples, fusion_ops: str = "auto") -> dict:
    import onnx

    from servicemaker.deploy import graph
    from servicemaker.deploy.optimize import CompileOptions, compile_network

    model = graph.fold_constants(onnx.load(str(src)))
    opts = CompileOptions(target="onnxruntime", precision="int8", threads=threads, allow_accuracy_drop=True,
                          fusion_ops=fusion_ops)
    out, report = compile_network(model, opts, calib, samples, work / f"{src.stem}-c")
    graph.save(out, dst)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm,bert-base")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fusion-ops", default="auto", choices=("auto", "onnx", "ort_contrib", "ort"),
                    help="what (c)'s fused patterns become (nn.fusion_ops)")
    args = ap.parse_args(argv)

    from servicemaker.deploy import accuracy
    from servicemaker.deploy.feeds import bundled
    from servicemaker.deploy.optimize import run

    texts = bundled("samples")
    calib = feeds(bundled("calibration"), 8, pad_to=None)
    samples = feeds(texts, 8, pad_to=None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="svc-bench-") as tmp:
        work = Path(tmp)
        for name, (src, heads, hidden) in export_models(work, args.models.split(",")).items():
            b_path, c_path = work / f"{name}-b.onnx", work / f"{name}-c.onnx"
            t = time.perf_counter()
            recipe_b(src, b_path, heads, hidden)
            b_secs = time.perf_counter() - t
            t = time.perf_counter()
            report = recipe_c(src, c_path, work, args.threads, calib, samples, args.fusion_ops)
            c_secs = time.perf_counter() - t
            after = report["ops_after"]
            gelu = sum(after.get(op, 0) for op in ("Gelu", "BiasGelu", "FastGelu"))
            fusion = (f"{report['fusion']['flavor']} flavor: {gelu} GELU, "
                      f"{after.get('LayerNormalization', 0) + after.get('SkipLayerNormalization', 0)} LayerNorm-family, "
                      f"{after.get('MultiHeadAttention', 0)} MultiHeadAttention")
            print(f"{name}: (b) prepared in {b_secs:.1f} s; (c) compiled in {c_secs:.1f} s: {fusion}, "
                  f"INT8 layers {report['int8']['quantized']}/{report['int8']['layers']}, "
                  f"kept FP32 {report['int8']['kept_fp32']}", file=sys.stderr)
            outputs = [o.name for o in onnx.load(str(src), load_external_data=False).graph.output]
            ref = run(src, samples, args.threads)
            acc = {}
            for label, path in (("b", b_path), ("c", c_path)):
                gate = accuracy.compare(ref, run(path, samples, args.threads), samples, outputs)
                top1 = gate.outputs["logits"].top1 if "logits" in gate.outputs else None  # embeddings have no top-1
                acc[label] = (gate.outputs["embedding"].cosine, top1)
            for batch in (1, 8):
                feed = feeds(texts[:batch], batch)[0]
                ms = time_models({"a": src, "b": b_path, "c": c_path}, feed, args.threads, args.runs)
                rows.append((name, batch, ms, acc))
    print(f"\nONNX Runtime CPU, {args.threads} intra-op threads, sequence {SEQ}, median of {args.runs} interleaved "
          "runs; accuracy against (a) on the 48 sample sentences: cosine of the mean-pooled embeddings, top-1 "
          "agreement of the text_classification logits")
    print("| model | batch | (a) FP32 export ms | (b) ORT optimizer + quantize_dynamic ms | (c) servicemaker "
          "ms | c/a | c/b | (b) cosine / top-1 | (c) cosine / top-1 |")
    print("|---|---|---|---|---|---|---|---|---|")

    def fmt(a: tuple[float, float | None]) -> str:
        return f"{a[0]:.4f} / " + (f"{a[1]:.1%}" if a[1] is not None else "n/a (random weights)")

    for name, batch, ms, acc in rows:
        print(f"| {name} | {batch} | {ms['a']:.1f} | {ms['b']:.1f} | {ms['c']:.1f} | {ms['c'] / ms['a']:.2f} | "
              f"{ms['c'] / ms['b']:.2f} | {fmt(acc['b'])} | {fmt(acc['c'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
