"""Sample inputs for the network step: real sentences tokenized by the pipeline's own tokenizer.

Calibration uses the RMIR's ``nn.calibration_data`` file (one example per line; for QA ``question<TAB>context``)
or, when the RMIR has none, the 95 English sentences in ``data/calibration.txt``. The accuracy gate and the fusion
checks always use ``data/samples.txt`` (48 other sentences), so the gate never scores the calibration set.
"""

from __future__ import annotations

from importlib import resources
from typing import Callable, Sequence

import numpy as np

from servicemaker.runtime import common as runtime

Feeds = dict[str, np.ndarray]
BATCH = 8
QA_QUESTION = "what is this about"


def bundled(name: str) -> list[str]:
    """Lines of a sample file shipped with servicemaker (``calibration`` or ``samples``)."""
    text = resources.files("servicemaker.deploy").joinpath(f"data/{name}.txt").read_text(encoding="utf-8")
    return lines(text)


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def tokenized(examples: Sequence[str], tokenizer: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
              qa: bool = False, batch: int = BATCH) -> list[Feeds]:
    """Batches of ``batch`` examples, each padded to its longest row, as graph feeds."""
    out: list[Feeds] = []
    for start in range(0, len(examples), batch):
        rows = examples[start:start + batch]
        if qa:
            pairs = [row.split("\t", 1) if "\t" in row else (QA_QUESTION, row) for row in rows]
            enc = tokenizer({"QUESTION": runtime.strings([[q] for q, _ in pairs]),
                             "CONTEXT": runtime.strings([[c] for _, c in pairs])})
        else:
            enc = tokenizer({"TEXT": runtime.strings([[r] for r in rows])})
        out.append({k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask")})
    return out
