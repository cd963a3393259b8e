"""svc-samples: write sample exports (``<pipeline>.riva``) into a folder.

    svc-samples OUT_DIR                 MiniLM exports for the five NLP pipelines
    svc-samples OUT_DIR -p speech_recognition
                                        a small char CTC model trained here on espeak-ng speech (cached), and a
                                        held-out utterance to try it on (.wav, with its text in .txt)
    svc-samples OUT_DIR -p speech_synthesis
                                        a small FastPitch and HiFi-GAN with NeMo's export signatures (random,
                                        seeded weights: audio of the right length, no words)
    svc-samples OUT_DIR --tiny          tiny random models for all seven pipelines (fast; for tests and smoke runs)
    svc-samples OUT_DIR -p text_classification
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from servicemaker.cli.common import DEBUG_HELP, err_console, reported_errors
from servicemaker.errors import UsageError

NLP = ("text_classification", "token_classification", "intent_slot", "punctuation", "qa")
ALL = NLP + ("speech_recognition", "speech_synthesis")

app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)


def make_samples(out: Path, pipelines: tuple[str, ...], tiny: bool, key: str | None = None) -> list[Path]:
    from servicemaker.samples import models

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    encoder = tokenizer = None
    for name in pipelines:
        if name in NLP:
            if tiny:
                written.append(models.tiny_nlp_export(name, out / f"{name}.riva", key=key))
            else:
                if encoder is None:
                    encoder, tokenizer = models.load_minilm()
                written.append(models.minilm_export(name, out / f"{name}.riva", encoder, tokenizer, key=key))
                if name == "text_classification":
                    written.append(models.write_gate_data(out / "text_classification_gate.tsv"))
        elif name == "speech_recognition" and tiny:
            written.append(models.tiny_asr_export(out / "speech_recognition.riva", key=key))
        elif name == "speech_recognition":
            from servicemaker.client import write_wav
            from servicemaker.samples import asr

            written.append(asr.asr_export(out / "speech_recognition.riva", key=key))
            text, audio = asr.held_out_utterances(1)[0]  # a voice and speed the model never heard in training
            write_wav(out / "speech_recognition.wav", audio, asr.SAMPLE_RATE)
            (out / "speech_recognition.txt").write_text(text + "\n", encoding="utf-8")
            written += [out / "speech_recognition.wav", out / "speech_recognition.txt"]
        elif name == "speech_synthesis":
            from servicemaker.samples import tts

            written.extend(tts.tts_exports(out / "fastpitch.riva", out / "hifigan.riva", key=key))
    return written


@app.command()
def svc_samples(
    out: Path = typer.Argument(..., help="folder to write the exports into"),
    pipeline: Optional[List[str]] = typer.Option(None, "-p", "--pipeline", help="only these pipelines"),
    tiny: bool = typer.Option(False, "--tiny", help="tiny models built in code instead of MiniLM"),
    key: Optional[str] = typer.Option(None, "--key", help="encrypt the exports (servicemaker AES-256-GCM)"),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Write sample model exports for svc-build."""
    with reported_errors(debug):
        names = tuple(pipeline) if pipeline else (ALL if tiny else NLP)
        for name in names:
            if name not in ALL:
                raise UsageError(f"unknown pipeline '{name}'", hint=f"pipelines: {', '.join(ALL)}")
        started = time.perf_counter()
        for path in make_samples(out, names, tiny, key):
            print(path)
        err_console.print(f"Finished writing samples in {time.perf_counter() - started:.1f} s", markup=False)


def main() -> None:
    app(prog_name="svc-samples")


if __name__ == "__main__":
    main()
