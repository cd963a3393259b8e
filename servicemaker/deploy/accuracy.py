"""The accuracy gate: an optimized network's outputs against the FP32 original's on the same sample inputs.

Per output it reports the largest absolute difference, the cosine similarity of each row (the row's values at
its real tokens, padding left out) and top-1 agreement (argmax over the last axis: a row's class, or each real
token's label). The gate's measure is the worst output's mean cosine: ``1 - cosine`` must stay within
``nn.accuracy_tolerance``.

A family can add figures of its own (:data:`ExtraGate`, e.g. speech recognition's character error rate of the
optimized transcripts against the FP32 ones) and name one of them as the measure instead: an error rate, 0 at best,
which ``nn.accuracy_tolerance`` then bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

Outputs = dict[str, np.ndarray]
#: a family's own gate figures: (FP32 outputs, optimized outputs, feeds) → figures or None, one ``{output name:
#: array}`` per feed. The figure a ``"gated_by"`` key names is what ``nn.accuracy_tolerance`` bounds.
ExtraGate = Callable[[list[Outputs], list[Outputs], Sequence[dict[str, np.ndarray]]], dict[str, Any] | None]


@dataclass
class OutputAccuracy:
    max_abs: float = 0.0
    cosines: list[float] = field(default_factory=list)
    agree: int = 0
    total: int = 0

    @property
    def cosine(self) -> float:
        return float(np.mean(self.cosines)) if self.cosines else 1.0

    @property
    def top1(self) -> float:
        return self.agree / self.total if self.total else 1.0


@dataclass
class Gate:
    outputs: dict[str, OutputAccuracy]
    figures: dict[str, Any] = field(default_factory=dict)   # the family's own (ExtraGate)
    gated_by: str = "cosine"                                 # "cosine" (1 - cosine) or a key of ``figures``

    @property
    def cosine(self) -> float:
        return min((o.cosine for o in self.outputs.values()), default=1.0)

    @property
    def top1(self) -> float:
        return min((o.top1 for o in self.outputs.values()), default=1.0)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs.values()), default=0.0)

    @property
    def drop(self) -> float:
        """What ``nn.accuracy_tolerance`` bounds: ``1 - cosine``, or the family's error rate."""
        return 1.0 - self.cosine if self.gated_by == "cosine" else float(self.figures[self.gated_by])

    def within(self, tolerance: float) -> bool:
        return self.drop <= tolerance

    def summary(self) -> str:
        head = "" if self.gated_by == "cosine" else f"{self.gated_by} {self.drop:.4g}, "
        return head + f"cosine {self.cosine:.5f} (drop {1 - self.cosine:.5f}), top-1 agreement {self.top1:.2%}, " \
                      f"max abs difference {self.max_abs:.4g}"

    def as_dict(self, tolerance: float) -> dict[str, Any]:
        return {"status": "passed" if self.within(tolerance) else "failed", "tolerance": tolerance,
                "gated_by": self.gated_by, **self.figures,
                "cosine": round(self.cosine, 6), "top1_agreement": round(self.top1, 6),
                "max_abs_diff": round(self.max_abs, 6),
                "outputs": {name: {"cosine": round(o.cosine, 6), "min_cosine": round(min(o.cosines, default=1.0), 6),
                                   "top1_agreement": round(o.top1, 6), "max_abs_diff": round(o.max_abs, 6),
                                   "rows": len(o.cosines)}
                            for name, o in self.outputs.items()}}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def edit_distance(ref: Sequence[Any], hyp: Sequence[Any]) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions turning ``ref`` into ``hyp``."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[-1]


def word_error_rate(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Word error rate of ``hyps`` against ``refs``: edit distances over whitespace words (at least 1 word)."""
    errors = sum(edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps))
    return errors / max(1, sum(len(r.split()) for r in refs))


def char_error_rate(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Character error rate of ``hyps`` against ``refs``: edit distances over reference characters (at least 1)."""
    errors = sum(edit_distance(r, h) for r, h in zip(refs, hyps))
    return errors / max(1, sum(len(r) for r in refs))


def compare(reference: Sequence[Sequence[np.ndarray]], optimized: Sequence[Sequence[np.ndarray]],
            feeds: Sequence[dict[str, np.ndarray]], names: Sequence[str] | None = None,
            extra: ExtraGate | None = None) -> Gate:
    """Compare outputs of ``run`` over the same ``feeds`` (a list per feed, one array per graph output); ``extra``
    adds the family's figures (it needs ``names``)."""
    outputs: dict[str, OutputAccuracy] = {}
    for ref_row, opt_row, feed in zip(reference, optimized, feeds):
        mask = feed.get("attention_mask")
        for i, (ref, opt) in enumerate(zip(ref_row, opt_row)):
            if not np.issubdtype(ref.dtype, np.floating):
                continue
            acc = outputs.setdefault(names[i] if names else f"output{i}", OutputAccuracy())
            ref64, opt64 = ref.astype(np.float64), opt.astype(np.float64)
            acc.max_abs = max(acc.max_abs, float(np.max(np.abs(ref64 - opt64))) if ref.size else 0.0)
            for b in range(ref.shape[0]):
                r, o = ref64[b], opt64[b]
                if r.ndim >= 2 and mask is not None and mask.shape[:2] == (ref.shape[0], r.shape[0]):
                    keep = mask[b].astype(bool)
                    r, o = r[keep], o[keep]
                if r.size == 0:
                    continue
                acc.cosines.append(cosine(r.ravel(), o.ravel()))
                if r.ndim >= 1 and r.shape[-1] > 1:
                    same = np.argmax(r, axis=-1) == np.argmax(o, axis=-1)
                    acc.agree += int(np.sum(same))
                    acc.total += int(np.size(same))
    gate = Gate(outputs)
    if extra is not None and names:
        figures = extra([dict(zip(names, row)) for row in reference], [dict(zip(names, row)) for row in optimized],
                        feeds) or {}
        gate.gated_by = figures.pop("gated_by", "cosine")
        gate.figures = figures
    return gate
