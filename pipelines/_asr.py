"""The ASR family: what the speech_recognition pipelines (streaming and offline) share — components, Riva's flag
names, the ensemble tensors — and the family's deploy hooks: the acoustic model is checked against NeMo's
preprocessor settings and fused behind an ONNX featurizer (one network from audio to log-probs), sample audio for
the compiler, TensorRT profiles over audio length.
"""

from __future__ import annotations

from typing import Any

from servicemaker.errors import ValidationError
from servicemaker.family import Family, NetworkJob, SampleFeeds, network_models, refuse
from servicemaker.onnx_scan import GraphScan
from servicemaker.pipeline import Bind, Component, Param, Pipeline, Tensor, network_params, serving_params

AUDIO_INPUTS = (Tensor(name="AUDIO_SIGNAL", dtype="FP32", dims=(-1,)),
                Tensor(name="SAMPLE_RATE", dtype="INT32", dims=(1,)))
TRANSCRIPT_OUTPUTS = (Tensor(name="TRANSCRIPT", dtype="STRING", dims=(1,)),
                      Tensor(name="WORDS", dtype="STRING", dims=(-1,)),
                      Tensor(name="WORD_START_MS", dtype="INT32", dims=(-1,)),
                      Tensor(name="WORD_END_MS", dtype="INT32", dims=(-1,)))
DECODED = {t.name: t.name for t in TRANSCRIPT_OUTPUTS}
MODEL_CLASSES = ("EncDecCTCModel", "EncDecCTCModelBPE")

#: Riva's riva-build flag names → our component parameters
ALIASES = {
    "decoder_type": "ctc_decoder.decoder_type",
    "flashlight_decoder.beam_size": "ctc_decoder.beam_size",
    "flashlight_decoder.beam_threshold": "ctc_decoder.beam_threshold",
    "flashlight_decoder.lm_weight": "ctc_decoder.lm_weight",
    "flashlight_decoder.word_insertion_score": "ctc_decoder.word_insertion_score",
    "decoding_language_model_binary": "ctc_decoder.language_model",
    "decoding_language_model_arpa": "ctc_decoder.language_model",
    "decoding_vocab": "ctc_decoder.decoding_vocab",
    "ms_per_timestep": "ctc_decoder.ms_per_timestep",
    "max_audio_seconds": "featurizer.max_audio_seconds",
}
STREAMING_ALIASES = {**ALIASES, "chunk_size": "featurizer.chunk_size",
                     "left_padding_size": "featurizer.left_padding_size",
                     "right_padding_size": "featurizer.right_padding_size"}

#: NeMo's AudioToMelSpectrogramPreprocessor keys a user may override (``--featurizer.<key>``); unset ones come from
#: the model's ``preprocessor`` section, else NeMo's defaults.
PREPROCESSOR = (
    Param(name="sample_rate", type="int", min=8000, max=96000, help="the model's sample rate in Hz"),
    Param(name="window_size", type="float", min=0.001, max=1.0, help="window length in seconds"),
    Param(name="window_stride", type="float", min=0.001, max=1.0, help="hop length in seconds"),
    Param(name="n_fft", type="int", min=16, max=65536, help="FFT size (default: next power of 2 of the window)"),
    Param(name="features", type="int", min=1, max=512, help="mel bands"),
    Param(name="window", type="choice", choices=("hann", "hamming", "blackman", "bartlett", "ones"),
          help="window function"),
    Param(name="normalize", type="choice", choices=("per_feature", "all_features", "NA"),
          help="feature normalization"),
    Param(name="preemph", type="float", min=0.0, max=1.0, help="pre-emphasis coefficient"),
    Param(name="lowfreq", type="float", min=0.0, max=48000.0, help="lowest mel filter frequency in Hz"),
    Param(name="highfreq", type="float", min=0.0, max=48000.0, help="highest mel filter frequency in Hz"),
    Param(name="log_zero_guard_type", type="choice", choices=("add", "clamp"), help="log guard"),
    Param(name="log_zero_guard_value", type="float", min=0.0, max=1.0, help="log guard value"),
    Param(name="mag_power", type="float", min=0.5, max=4.0, help="power of the magnitude spectrum"),
    Param(name="pad_to", type="int", min=0, max=1024, default=0,
          help="pad frames to a multiple of this (0, as NeMo's transcribe() does; the config's value is ignored)"),
)


def featurizer(handler: str, model_name: str, *, streaming: bool) -> Component:
    extra: tuple[Param, ...] = (
        Param(name="max_audio_seconds", type="float", min=0.1, max=86400.0, default=3600.0 if streaming else 600.0,
              help="longest audio accepted" + (" per stream" if streaming else " per request")),
    )
    if streaming:
        extra += (
            Param(name="chunk_size", type="float", min=0.01, max=10.0, default=0.16,
                  help="seconds of audio decoded per step"),
            Param(name="left_padding_size", type="float", min=0.0, max=30.0, default=1.92,
                  help="seconds of past audio each step sees"),
            Param(name="right_padding_size", type="float", min=0.0, max=30.0, default=1.92,
                  help="seconds of future audio each step waits for (the latency)"),
            Param(name="idle_timeout_s", type="float", min=1.0, max=86400.0, default=60.0,
                  help="a stream idle this long is dropped (Triton's sequence idle timeout)"),
        )
    help = ("streaming front end: buffers each stream's audio and runs the network on windows of left padding + "
            "chunk + right padding" if streaming else "checks and resamples the request audio")
    # Offline, utterances of different lengths never batch in the Python models: waiting for a batch buys nothing.
    delay = 1000 if streaming else 0
    return Component(name="featurizer", kind="python", model_name=model_name, handler=handler, help=help,
                     params=serving_params(queue_delay_us=delay) + PREPROCESSOR + extra)


def network(model_name: str) -> Component:
    return Component(name="nn", kind="network", model_name=model_name, handler="onnx",
                     help="NeMo's featurizer (as ONNX) fused with the CTC acoustic model: audio → log-probs",
                     params=network_params(precision="fp16", calibration_method="minmax"),  # minmax kept CER 0
                     binds=(Bind(role="graph", pattern="*.onnx"), Bind(role="model_config", pattern="model_config.yaml")))


def decoder(handler: str, model_name: str, *, streaming: bool) -> Component:
    params = serving_params(queue_delay_us=1000 if streaming else 0) + (
        Param(name="decoder_type", type="choice", choices=("greedy", "flashlight"), default="greedy",
              help="greedy CTC, or beam search with an optional n-gram LM (pyctcdecode + KenLM)"),
        Param(name="beam_size", type="int", min=1, max=4096, default=32, help="beams kept"),
        Param(name="beam_threshold", type="float", min=0.0, max=1000.0, default=10.0,
              help="beams scoring this far below the best are pruned"),
        Param(name="lm_weight", type="float", min=0.0, max=10.0, default=0.5, help="language model weight"),
        Param(name="word_insertion_score", type="float", min=-100.0, max=100.0, default=1.5,
              help="score added per word"),
        Param(name="language_model", type="file", default=None,
              help="n-gram LM, ARPA or KenLM binary (bundled into the RMIR)"),
        Param(name="decoding_vocab", type="file", default=None, help="the LM's words, one per line"),
        Param(name="ms_per_timestep", type="float", min=1.0, max=1000.0, default=None,
              help="ms per log-prob frame (default: measured from the graph and the preprocessor)"),
    )
    if streaming:
        params += (Param(name="idle_timeout_s", type="float", min=1.0, max=86400.0, default=60.0,
                         help="a stream idle this long is dropped"),)
    return Component(name="ctc_decoder", kind="python", model_name=model_name, handler=handler, params=params,
                     help="CTC decoding to text and word timings (char vocabulary, or SentencePiece for BPE models)",
                     binds=(Bind(role="model_config", pattern="model_config.yaml"),
                            Bind(role="tokenizer_model", config_key="tokenizer.model_path", required=False)))


class AsrFamily(Family):
    name = "asr"
    runtime = "asr"
    requirements = {
        "asr_network": ("numpy<2", "onnxruntime>=1.20"),
        "onnx": ("numpy<2", "onnxruntime>=1.20"),
        "asr_audio": ("numpy<2", "soxr>=0.3"),
        "asr_stream": ("numpy<2", "soxr>=0.3"),
        "*": ("numpy<2", "PyYAML>=6", "sentencepiece>=0.1.99", "pyctcdecode>=0.5", "kenlm"),
    }

    def check_graph(self, job: NetworkJob, model: Any) -> Any:
        """The acoustic model must take the preprocessor's features and give log-probs over the vocabulary + blank;
        the streaming window must fall on its frames. Returns the fused graph's signature."""
        from servicemaker.deploy import graph as graphs
        from servicemaker.speech import acoustic, featurizer as feat

        cfg = self._featurizer_config(job)
        problems = acoustic.check_acoustic_model(model, cfg)
        if not problems:
            stride = acoustic.time_stride(model)
            ms = 1000.0 * cfg.hop_length / cfg.sample_rate * stride
            job.state.update(featurizer=cfg, stride=stride, ms_per_timestep=ms)
            problems += self._vocabulary_problems(job, model)
            problems += self._timing_problems(job, ms)
        _refuse(job.where, job.spec.pipeline, problems)
        return graphs.signature(acoustic.fuse(feat.build_featurizer(cfg), model, job.state["stride"]), job.where)

    def check_scanned_graph(self, pipeline: Pipeline, graph: GraphScan, component: str) -> None:
        """At svc-build, the acoustic model's interface: one rank-3 float features input (and at most one length),
        a rank-3 float log-probs output, dynamic batch and time axes. Its feature count, classes and time stride
        are checked against the preprocessor and vocabulary at svc-deploy."""
        from servicemaker.speech import acoustic

        _refuse(graph.where, pipeline.name, list(acoustic.acoustic_interface(graph.as_model()).problems))

    def saved_state(self, job: NetworkJob) -> dict[str, Any]:
        """The preprocessor settings, the acoustic model's time stride and the frame spacing check_graph found."""
        import dataclasses

        return {"featurizer": dataclasses.asdict(job.state["featurizer"]), "stride": job.state["stride"],
                "ms_per_timestep": job.state["ms_per_timestep"]}

    def restore_state(self, job: NetworkJob, saved: Any) -> dict[str, Any]:
        import dataclasses

        from servicemaker.speech.featurizer import FeaturizerConfig

        if not isinstance(saved, dict) or set(saved) != {"featurizer", "stride", "ms_per_timestep"}:
            raise ValueError("the ASR network state is not featurizer, stride, ms_per_timestep")
        cfg, stride, ms = saved["featurizer"], saved["stride"], saved["ms_per_timestep"]
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
            raise ValueError(f"bad time stride {stride!r}")
        if not isinstance(ms, (int, float)) or isinstance(ms, bool) or not 0 < ms < 1e6:
            raise ValueError(f"bad ms_per_timestep {ms!r}")
        if not isinstance(cfg, dict) or set(cfg) != {f.name for f in dataclasses.fields(FeaturizerConfig)}:
            raise ValueError("the featurizer settings are not FeaturizerConfig's fields")
        try:
            featurizer = FeaturizerConfig(**cfg)
        except (TypeError, ValueError, ValidationError) as err:
            raise ValueError(f"bad featurizer settings ({type(err).__name__})") from None
        return {"featurizer": featurizer, "stride": stride, "ms_per_timestep": float(ms)}

    def network_graph(self, job: NetworkJob, folded: Any) -> Any:
        from servicemaker.speech import acoustic, featurizer as feat

        return acoustic.fuse(feat.build_featurizer(job.state["featurizer"]), folded, job.state["stride"])

    def sample_feeds(self, job: NetworkJob) -> SampleFeeds:
        from servicemaker.speech import audio

        if job.calibration_path is not None:
            raise ValidationError(f"{job.where}: nn.calibration_data is not supported for speech_recognition yet",
                                  hint="rebuild without --nn.calibration_data; the bundled utterances are used")
        rate = job.state["featurizer"].sample_rate
        return SampleFeeds(audio.feeds("calibration", rate), audio.feeds("samples", rate),
                           "servicemaker's bundled synthesized English utterances")

    def engine_profile(self, job: NetworkJob) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Batch 1..max_batch_size × samples: one hop .. the streaming window, or .. max_audio_seconds offline."""
        rate = job.state["featurizer"].sample_rate
        fp = job.component_params("featurizer")
        seconds = (fp["left_padding_size"] + fp["chunk_size"] + fp["right_padding_size"]
                   if "chunk_size" in fp else fp["max_audio_seconds"])
        batch, longest = int(job.params["max_batch_size"]), int(round(seconds * rate))
        shortest = job.state["featurizer"].hop_length
        opt = (max(1, (batch + 1) // 2), max(shortest, longest // 2))
        return {"audio_signal": ((1, shortest), opt, (batch, longest)), "length": ((1,), (opt[0],), (batch,))}

    def model_params(self, jobs: dict[str, NetworkJob], component: str) -> dict[str, str]:
        job = jobs["nn"]
        cfg = job.state["featurizer"]
        out = {"ms_per_timestep": f"{job.state['ms_per_timestep']:g}"}
        if component == "featurizer":
            out["sample_rate"] = str(cfg.sample_rate)
            if "chunk_size" in job.component_params("featurizer"):
                out["network_models"] = network_models({"nn": (job.model_names["nn"], ("logprobs", "encoded_lengths"),
                                                               True)})
                out["network_max_batch_size"] = str(job.params["max_batch_size"])
        return out

    def network_handler(self, job: NetworkJob) -> str:
        return "asr_network"

    def int8_exclude(self, job: NetworkJob) -> tuple[str, ...]:
        """INT8 quantizes the acoustic model only: the fused featurizer's STFT convolution, mel MatMul, log and
        normalization stay FP32 (the log of small mel energies is precision-critical)."""
        return ("featurizer/",)

    def gate(self, job: NetworkJob, reference: list[dict[str, Any]], optimized: list[dict[str, Any]],
             feeds: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Greedy CTC transcripts of the FP32 and the optimized log-probs (each row cut at the FP32
        ``encoded_lengths``) over ``decoder.vocabulary``: ``cer_vs_fp32``, the character error rate of the
        optimized transcripts against the FP32 ones, is what ``nn.accuracy_tolerance`` bounds."""
        from servicemaker.deploy.accuracy import char_error_rate

        vocab = [str(v) for v in (self._model_config(job).get("decoder") or {}).get("vocabulary") or []]
        fp32: list[str] = []
        opt: list[str] = []
        for ref_out, opt_out in zip(reference, optimized):
            name = next(k for k, v in ref_out.items() if v.ndim == 3 and v.dtype.kind == "f")
            lengths = ref_out.get("encoded_lengths")
            fp32 += self._greedy_ctc(ref_out[name], lengths, vocab)
            opt += self._greedy_ctc(opt_out[name], lengths, vocab)
        changed = [{"fp32": r, "optimized": o} for r, o in zip(fp32, opt) if r != o]
        return {"gated_by": "cer_vs_fp32", "cer_vs_fp32": round(char_error_rate(fp32, opt), 6),
                "transcripts": len(fp32), "transcripts_changed": len(changed),
                "fp32_characters": sum(len(t) for t in fp32), "changed_examples": changed[:3]}

    @staticmethod
    def _greedy_ctc(logprobs: Any, lengths: Any, vocab: list[str]) -> list[str]:
        """Greedy CTC per row (the first ``lengths[b]`` frames), decoded as the deployed decoder does."""
        from servicemaker.runtime import asr

        labels = asr.Vocabulary(vocab)
        blank = logprobs.shape[-1] - 1
        texts = []
        for b, row in enumerate(logprobs):
            tokens, _ = asr.collapse(row[: int(lengths[b]) if lengths is not None else len(row)].argmax(-1), blank)
            texts.append(" ".join(labels.text(tokens).replace("\u2581", " ").split()))  # BPE pieces: ▁ = space
        return texts

    # -- helpers ----------------------------------------------------------------------------------------------------
    @staticmethod
    def _model_config(job: NetworkJob) -> dict[str, Any]:
        """The export's model_config.yaml, read once per deploy."""
        from servicemaker import yamlio
        from servicemaker.errors import ArchiveError

        if "model_config" not in job.state:
            try:
                config = yamlio.load(job.files["ctc_decoder"]["model_config"].read_bytes())
            except yamlio.YamlError as err:
                raise ArchiveError(f"{job.where}: model_config.yaml is not valid YAML: {err}",
                                   hint="rebuild the RMIR from an intact export") from None
            job.state["model_config"] = config if isinstance(config, dict) else {}
        return job.state["model_config"]

    def _featurizer_config(self, job: NetworkJob) -> Any:
        from servicemaker.speech.featurizer import FeaturizerConfig

        given = {p.name: job.component_params("featurizer").get(p.name) for p in PREPROCESSOR}
        return FeaturizerConfig.from_model_config(self._model_config(job),
                                                  {k: v for k, v in given.items() if v is not None})

    def _vocabulary_problems(self, job: NetworkJob, model: Any) -> list[str]:
        from servicemaker.speech import acoustic

        vocab = (self._model_config(job).get("decoder") or {}).get("vocabulary") or []
        out = acoustic.acoustic_interface(model).logprobs
        classes = out.type.tensor_type.shape.dim[-1].dim_value if out is not None else 0
        if classes and classes != len(vocab) + 1:
            return [f"the graph gives {classes} classes per frame but decoder.vocabulary has {len(vocab)} entries "
                    f"(+1 blank = {len(vocab) + 1})"]
        return []

    @staticmethod
    def _timing_problems(job: NetworkJob, ms: float) -> list[str]:
        problems = []
        given = job.component_params("ctc_decoder").get("ms_per_timestep")
        if given is not None and abs(float(given) - ms) > 1e-6:
            problems.append(f"ms_per_timestep={given:g} but the model's frames are {ms:g} ms apart "
                            f"(window_stride × time stride {job.state['stride']})")
        fp = job.component_params("featurizer")
        for key in ("chunk_size", "left_padding_size", "right_padding_size"):
            if key in fp:
                frames = float(fp[key]) * 1000.0 / ms
                if abs(frames - round(frames)) > 1e-6:
                    problems.append(f"{key}={fp[key]:g} s is not a whole number of {ms:g} ms frames")
        return problems


def _refuse(where: str, pipeline: str, problems: list[str]) -> None:
    refuse(where, pipeline, problems, "export the CTC model with NeMo (nemo2riva) and keep the preprocessor "
                                      "settings it was trained with")


FAMILY = AsrFamily()
