"""The NeMo-made TTS fixtures (``tests/fixtures/tts``, written by its ``make_fixtures.py``) packed as nemo2riva
lays out a ``.riva``: FastPitch with ``model_graph.onnx``, ``model_config.yaml`` (nemo2riva's ``export_config``)
and ``mapping.txt``; HiFi-GAN with its graph and config. And ONNX Runtime runners of the graphs themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from servicemaker.samples.export import binary_artifact, text_artifact, write_export

FIXTURES = Path(__file__).parent / "fixtures" / "tts"


def nemo_exports(folder: Path, layout: str = "ragged", key: str | None = None,
                 mapping: str | None = None) -> tuple[Path, Path]:
    """``fastpitch.riva`` and ``hifigan.riva`` of the NeMo fixtures in ``folder``; ``mapping`` replaces nemo2riva's
    mapping.txt (``""``: none)."""
    folder.mkdir(parents=True, exist_ok=True)
    mapping = (FIXTURES / "fastpitch_mapping.txt").read_text(encoding="utf-8") if mapping is None else mapping
    fp_arts = [binary_artifact("model_graph.onnx", (FIXTURES / f"fastpitch_{layout}.onnx").read_bytes(),
                               "FastPitch", onnx=True),
               text_artifact("model_config.yaml", (FIXTURES / "fastpitch_config.yaml").read_text(encoding="utf-8"))]
    if mapping:
        art = text_artifact("mapping.txt", mapping, "mapping file")
        art.props.update(path_type="TAR_PATH", nemo_artifact=True)
        fp_arts.append(art)
    fp = write_export(folder / "fastpitch.riva", "nemo.collections.tts.models.FastPitchModel", fp_arts, key=key)
    hg = write_export(folder / "hifigan.riva", "nemo.collections.tts.models.HifiGanModel",
                      [binary_artifact("model_graph.onnx", (FIXTURES / "hifigan.onnx").read_bytes(), "HiFi-GAN",
                                       onnx=True),
                       text_artifact("model_config.yaml", (FIXTURES / "hifigan_config.yaml").read_text(
                           encoding="utf-8"))], key=key)
    return fp, hg


def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "reference.npz") as npz:
        return {k: npz[k] for k in npz.files}


def session(path: Path, repair: bool = False) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """A runner of the ONNX graph at ``path`` (``repair``: NeMo 3.0's untyped loop values typed first)."""
    import onnx
    import onnxruntime as ort

    from servicemaker.deploy import graph as graphs

    model = onnx.load(str(path))
    if repair:
        graphs.remove_optionals(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    inputs = [i.name for i in sess.get_inputs()]

    def run(feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        return dict(zip(names, sess.run(names, {k: feeds[k] for k in inputs})))

    return run


def graphs_audio(symbols: np.ndarray, fastpitch: Path, hifigan: Path, pace: float = 1.0, shift: float = 0.0
                 ) -> np.ndarray:
    """What the exported graphs themselves give for one sentence's symbols: FastPitch (ragged, alone) then HiFi-GAN
    on its whole spectrogram."""
    fp, hg = session(fastpitch, repair=True), session(hifigan)
    n = len(symbols)
    out = fp({"text": symbols.astype(np.int64), "pitch": np.full(n, shift, np.float32),
              "pace": np.full(n, pace, np.float32), "volume": np.ones(n, np.float32),
              "batch_lengths": np.array([0, n], np.int32)})
    frames = int(out["num_frames"][0])
    return next(iter(hg({"spec": out["spect"][:, :, :frames]}).values())).reshape(-1)
