"""svc-serve REPO: a Triton server for a model repository on 127.0.0.1; optionally answer one query and stop."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from tritonclient.utils import InferenceServerException

from servicemaker import __version__
from servicemaker.cli.common import DEBUG_HELP, err_console, reported_errors, version_option
from servicemaker.client import (connect, ensemble_signatures, ensembles, infer, read_wav, readable,
                                 speech_synthesis_ensembles, synthesize, synthesize_stream, transcribe,
                                 transcribe_stream, write_wav)
from servicemaker.errors import ServiceMakerError, UsageError
from servicemaker.serve import TritonServer

class ServerAnswerError(ServiceMakerError):
    """The server answered a query with an error (the query or the repository's models are at fault)."""

    exit_code = 1


app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)


def _query(server: TritonServer, repo: Path, model: str | None, text: str, context: str | None) -> None:
    found = ensembles(repo)
    names = [model] if model else sorted(found)
    if model and model not in found:
        raise UsageError(f"--model {model} is not an ensemble of {repo}", hint=f"ensembles: {', '.join(found)}")
    speech = speech_synthesis_ensembles(repo)
    if model and model in speech:
        raise UsageError(f"{model} answers with audio", hint="give it the text with --say TEXT --out FILE.wav")
    client = connect(server.http_url)
    answers = {}
    for name in (n for n in names if n not in speech):
        wanted = found[name]
        if "TEXT" not in wanted and "QUESTION" not in wanted:
            if model:
                raise UsageError(f"{name} does not take text", hint="give it a WAV file with --audio FILE")
            continue
        if "CONTEXT" in wanted:
            if context is None:
                if model:
                    raise UsageError(f"{name} answers a QUESTION about a CONTEXT", hint="add --context TEXT")
                continue
            inputs = {"QUESTION": [text], "CONTEXT": [context]}
        else:
            inputs = {"TEXT": [text]}
        answers[name] = readable(infer(client, name, inputs))[0]
    print(json.dumps(answers, indent=2, ensure_ascii=False))


def _speech_plan(repo: Path, model: str | None, audio_file: Path, streaming: bool):
    """The WAV file's samples and rate, and the ensembles to send it to; checked before the server starts."""
    import wave

    if not audio_file.is_file():
        raise UsageError(f"--audio {audio_file} does not exist")
    try:
        audio, rate = read_wav(audio_file)
    except (ValueError, EOFError, OSError, wave.Error) as err:
        raise UsageError(f"--audio {audio_file} is not a readable PCM WAV file: {str(err) or 'no RIFF/WAVE header'}",
                         hint="convert it, e.g. sox IN -b 16 OUT.wav") from None
    kind = "streaming" if streaming else "offline"
    found = {name: "IS_FINAL" in outs for name, (ins, outs) in ensemble_signatures(repo).items()
             if "AUDIO_SIGNAL" in ins}
    names = [n for n, is_stream in found.items() if is_stream == streaming and (model is None or n == model)]
    if not names:
        raise UsageError(f"{repo} has no {kind} speech recognition ensemble" + (f" named {model}" if model else ""),
                         hint=("deploy one built with svc-build speech_recognition" + ("" if streaming else " --offline"))
                         + ("; or drop --streaming" if streaming else "; or add --streaming"))
    return audio, rate, names


def _transcribe(server: TritonServer, audio, rate: int, names: list[str], streaming: bool) -> None:
    """Answer one audio file with the offline (or, with --streaming, the streaming) speech ensembles."""
    client = connect(server.http_url)
    answers = {}
    for i, name in enumerate(names):
        if streaming:
            answers[name] = transcribe_stream(client, name, audio, rate, sequence_id=1000 + i)[-1]
        else:
            answers[name] = transcribe(client, name, audio, rate)
    print(json.dumps(answers, indent=2, ensure_ascii=False))


def _voice_plan(repo: Path, model: str | None, out: Path | None, streaming: bool) -> str:
    """The speech synthesis ensemble --say speaks with; checked before the server starts."""
    if out is None:
        raise UsageError("--say needs --out FILE.wav (the audio is written there)")
    if out.exists() and out.is_dir():
        raise UsageError(f"--out {out} is a folder", hint="give a .wav file name")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {out.parent} does not exist")
    kind = "streaming " if streaming else ""
    found = [n for n, is_stream in speech_synthesis_ensembles(repo).items()
             if is_stream == streaming and (model is None or n == model)]
    if not found:
        raise UsageError(f"{repo} has no {kind}speech synthesis ensemble" + (f" named {model}" if model else ""),
                         hint="deploy one built with svc-build speech_synthesis" + (
                             "; or drop --streaming" if streaming else "; or add --streaming"))
    if len(found) > 1:
        raise UsageError(f"{repo} has several {kind}speech synthesis ensembles", hint=f"pick one with --model: "
                                                                                    f"{', '.join(found)}")
    return found[0]


def _say(server: TritonServer, name: str, text: str, out: Path, streaming: bool) -> None:
    """Synthesize ``text`` with ``name``, write it to ``out``, print what was written."""
    started = time.perf_counter()
    first = None
    if streaming:
        chunks, rate = [], 0
        for audio, rate in synthesize_stream(connect(server.grpc_url, "grpc"), name, text):
            first = first if first is not None else time.perf_counter() - started
            chunks.append(audio)
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    else:
        audio, rate = synthesize(connect(server.http_url), name, text)
    seconds = time.perf_counter() - started
    write_wav(out, audio, rate)
    answer = {"model": name, "out": str(out), "sample_rate": rate, "samples": int(audio.size),
              "audio_seconds": round(audio.size / rate, 3) if rate else 0.0, "synthesis_seconds": round(seconds, 3)}
    if streaming:
        answer.update(chunks=len(chunks), first_chunk_seconds=round(first, 3) if first is not None else None)
    print(json.dumps(answer, indent=2))


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops the server the same way Ctrl-C does."""
    raise KeyboardInterrupt


@app.command()
def svc_serve(
    repo: Path = typer.Argument(..., help="the model repository (svc-deploy's output)"),
    http_port: int = typer.Option(8000, "--http-port", help="HTTP port on 127.0.0.1 (0: a free one)"),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="gRPC port on 127.0.0.1 (0: a free one)"),
    metrics_port: int = typer.Option(8002, "--metrics-port", help="metrics port on 127.0.0.1 (0: a free one)"),
    tritonserver: Optional[str] = typer.Option(None, "--tritonserver",
                                               help="tritonserver binary (default: PATH, else nvidia-pytriton's)"),
    query: Optional[str] = typer.Option(None, "--query", help="send this text to the ensembles, print the answers, "
                                                               "and stop the server"),
    context: Optional[str] = typer.Option(None, "--context", help="with --query: the context of a QA ensemble"),
    model: Optional[str] = typer.Option(None, "--model", help="with --query or --audio: only this ensemble"),
    audio: Optional[Path] = typer.Option(None, "--audio", help="transcribe this WAV file with the offline speech "
                                                               "ensembles, print the answers, and stop the server"),
    say: Optional[str] = typer.Option(None, "--say", help="speak this text with the speech synthesis ensemble, "
                                                          "write it to --out, and stop the server"),
    out: Optional[Path] = typer.Option(None, "--out", help="with --say: the WAV file to write (16-bit mono)"),
    streaming: bool = typer.Option(False, "--streaming", help="with --audio: stream it in 160 ms chunks through "
                                                              "the streaming speech ensembles instead; with --say: "
                                                              "receive the audio as a stream of chunks (gRPC)"),
    timeout: float = typer.Option(180.0, "--timeout", help="seconds to wait for the server to load the models"),
    verbose: int = typer.Option(0, "--log-verbose", help="Triton's --log-verbose level"),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
    _version: bool = version_option("svc-serve"),
) -> None:
    """Serve a model repository with Triton on 127.0.0.1 until Ctrl-C (or, with --query, --audio or --say, for one
    query)."""
    with reported_errors(debug):
        if not repo.is_dir():
            raise UsageError(f"{repo} is not a folder", hint="svc-serve MODEL_REPOSITORY")
        if sum(x is not None for x in (query, audio, say)) > 1:
            raise UsageError("give one of --query, --audio and --say")
        if streaming and audio is None and say is None:
            raise UsageError("--streaming needs --audio FILE.wav or --say TEXT")
        if out is not None and say is None:
            raise UsageError("--out goes with --say TEXT")
        speech = _speech_plan(repo, model, audio, streaming) if audio is not None else None
        voice = _voice_plan(repo, model, out, streaming) if say is not None else None
        server = TritonServer(repo, http_port=http_port or None, grpc_port=grpc_port or None,
                              metrics_port=metrics_port or None, binary=tritonserver, verbose=verbose)
        try:
            # every check that needs no server (its backends against the models' targets, requirements) first
            server.prepare()
            err_console.print(f"svc-serve (servicemaker) {__version__}: starting Triton for {repo}", markup=False)
            started = time.perf_counter()
            server.start()
            server.wait_ready(timeout)
            err_console.print(f"Triton ({server.origin}) ready in {time.perf_counter() - started:.1f} s: "
                              f"HTTP {server.http_url}, gRPC {server.grpc_url}, "
                              f"metrics 127.0.0.1:{server.metrics_port}", markup=False)
            if query is not None or audio is not None or say is not None:
                try:
                    if query is not None:
                        _query(server, repo, model, query, context)
                    elif say is not None:
                        _say(server, voice, say, out, streaming)
                    else:
                        _transcribe(server, *speech, streaming)
                except InferenceServerException as err:
                    raise ServerAnswerError(f"Triton answered with an error: {err.message()}",
                                            hint="see the server log above (add --log-verbose 1 for more)") from None
                return
            signal.signal(signal.SIGTERM, _interrupt)
            err_console.print("Press Ctrl-C to stop.", markup=False)
            while server.process is not None and server.process.poll() is None:
                time.sleep(0.5)
            raise UsageError(f"tritonserver stopped by itself (exit code {server.process.returncode})")
        finally:
            ran = server.process is not None
            server.stop()
            if ran:
                err_console.print("Triton stopped.", markup=False)


def main() -> None:
    app(prog_name="svc-serve")
