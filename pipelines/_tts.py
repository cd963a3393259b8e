"""The TTS family: the speech_synthesis pipeline's components and Riva's flag names, and the family's deploy hooks:
FastPitch and HiFi-GAN are read from their graphs and checked against each other and the text front end (symbol
table = FastPitch's embedding, mel bands, sample rate, hop), NeMo 3.0's unloadable ragged export is repaired, the
compiler gets real token ids and real speech spectrograms, TensorRT profiles over symbols and frames.
"""

from __future__ import annotations

import json
from typing import Any

from servicemaker.errors import ValidationError
from servicemaker.family import Family, NetworkJob, SampleFeeds, network_models, refuse
from servicemaker.onnx_scan import GraphScan
from servicemaker.pipeline import Bind, Component, Param, Pipeline, network_params, serving_params

#: what the text front end hands the synthesizers (component tensor → ensemble tensor, the same names)
SYMBOLS = {name: name for name in ("tokens", "sentence_lengths", "speaker", "pace", "pitch_shift")}
GENERATOR, VOCODER = "spectrogram_generator", "vocoder"
SYNTHESIZERS = ("synthesizer", "streaming_synthesizer")

#: Riva's riva-build flag names → our component parameters
ALIASES = {
    "voice_name": "preprocessor.voice_name",
    "subvoices": "preprocessor.subvoices",
    "num_speakers": "preprocessor.num_speakers",
    "phone_set": "preprocessor.phone_set",
    "arpabet_file": "preprocessor.phone_dictionary_file",
    "phone_dictionary_file": "preprocessor.phone_dictionary_file",
    "abbreviations_file": "preprocessor.abbreviations_file",
    "wfst_tokenizer_model": "preprocessor.wfst_tokenizer_model",
    "wfst_verbalizer_model": "preprocessor.wfst_verbalizer_model",
    "sample_rate": "vocoder.sample_rate",
}


def preprocessor() -> Component:
    return Component(
        name="preprocessor", kind="python", model_name="tts_preprocessor-{voice_name}", handler="tts_preprocess",
        help="text normalization, sentence splitting and FastPitch's symbol ids (NeMo's tokenizer of the model)",
        params=serving_params(queue_delay_us=0) + (
            Param(name="voice_name", type="str", default="English-US", help="the voice's name in model names"),
            Param(name="subvoices", type="str", default="",
                  help="speaker names and ids, 'Female-1:0,Male-1:1' (SPEAKER takes the ids)"),
            Param(name="num_speakers", type="int", min=1, max=65536, default=1, from_config="n_speakers",
                  help="speakers of a multi-speaker FastPitch"),
            Param(name="text_normalization", type="choice", choices=("auto", "builtin", "wfst", "none"),
                  default="auto", help="auto: the WFST grammars when given, else the built-in English normalizer"),
            Param(name="abbreviations_file", type="file", default=None,
                  help="abbreviations and their expansions, one 'abbr<TAB>expansion' per line"),
            Param(name="wfst_tokenizer_model", type="file", default=None,
                  help="text normalization classifier grammar (FAR, NeMo's tokenize_and_classify)"),
            Param(name="wfst_verbalizer_model", type="file", default=None,
                  help="text normalization verbalizer grammar (FAR, NeMo's verbalize)"),
            Param(name="phone_set", type="choice", choices=("auto", "arpabet", "ipa"), default="auto",
                  help="the voice's phone set (auto: from the model's tokenizer); checked against the tokenizer"),
            Param(name="phone_dictionary_file", type="file", default=None,
                  help="pronunciation dictionary (CMUdict format) replacing the one the model's config names"),
            Param(name="max_text_chars", type="int", min=1, max=1_000_000, default=10_000,
                  help="longest TEXT accepted, in characters"),
            Param(name="max_sentence_chars", type="int", min=16, max=10_000, default=400,
                  help="a longer sentence is split at punctuation or spaces"),
        ),
        binds=(Bind(role="model_config", input=GENERATOR, pattern="model_config.yaml"),
               Bind(role="phone_dict", input=GENERATOR, config_key="text_tokenizer.g2p.phoneme_dict", required=False),
               Bind(role="heteronyms", input=GENERATOR, config_key="text_tokenizer.g2p.heteronyms", required=False),
               Bind(role="mapping", input=GENERATOR, pattern="mapping.txt", required=False)))


def spectrogram_generator() -> Component:
    return Component(
        name=GENERATOR, kind="network", model_name="riva-{runtime}-fastpitch_encoder-{voice_name}",
        help="FastPitch: symbol ids → mel spectrogram (ragged or padded batches of sentences)",
        # durations round to whole frames: FP32 keeps every sentence's length (FP16 is a choice on TensorRT)
        params=network_params(precision="fp32", calibration_method="minmax"),
        binds=(Bind(role="graph", input=GENERATOR, pattern="*.onnx"),
               Bind(role="model_config", input=GENERATOR, pattern="model_config.yaml")))


def vocoder() -> Component:
    return Component(
        name=VOCODER, kind="network", model_name="riva-{runtime}-hifigan-{voice_name}",
        help="HiFi-GAN: mel spectrogram → waveform",
        params=network_params(precision="fp16", calibration_method="minmax") + (
            Param(name="sample_rate", type="int", min=8000, max=96000, default=22050,
                  from_config="preprocessor.sample_rate", help="the voice's sample rate in Hz (checked against "
                                                               "both models)"),
        ),
        binds=(Bind(role="graph", input=VOCODER, pattern="*.onnx"),
               Bind(role="model_config", input=VOCODER, pattern="model_config.yaml")))


def synthesizer(name: str, handler: str, model_name: str) -> Component:
    streaming = name == "streaming_synthesizer"
    extra: tuple[Param, ...] = (
        Param(name="overlap_frames", type="int", min=0, max=512, default=16,
              help="spectrogram frames of context each side of a vocoded chunk"),
    )
    if streaming:
        extra += (Param(name="chunk_frames", type="int", min=4, max=8192, default=32,
                        help="spectrogram frames of the first audio chunk (a shorter sentence goes whole)"),
                  Param(name="max_chunk_frames", type="int", min=4, max=8192, default=256,
                        help="chunks after the first double up to this many frames"))
    else:
        extra += (Param(name="max_vocoder_frames", type="int", min=16, max=65536, default=2048,
                        help="a longer sentence is vocoded in chunks of this many frames"),)
    # the vocoder's config travels with the synthesizer: svc-deploy reads its preprocessor settings (sample feeds)
    binds = () if streaming else (Bind(role="vocoder_config", input=VOCODER, pattern="model_config.yaml"),)
    help = ("streams audio chunks as they are vocoded, sentence by sentence" if streaming else
            "runs FastPitch and HiFi-GAN on the sentences of every request, one audio per request")
    # 5 ms of batching delay: against a synthesis of hundreds of ms it lets concurrent requests meet in one batch
    # (benchmarks/tts.py: at concurrency 4, Triton / in-process latency 1.15 with 0.5 ms, 1.07 with 5 ms)
    return Component(name=name, kind="python", model_name=model_name, handler=handler, binds=binds,
                     params=serving_params(queue_delay_us=5000) + extra, help=help)


class TtsFamily(Family):
    name = "tts"
    runtime = "tts"
    runtime_support = ("tts_text", "tts_normalize")
    requirements = {"onnx": ("numpy<2", "onnxruntime>=1.20"), "onnx_requests": ("numpy<2", "onnxruntime>=1.20"),
                    "tts_preprocess": ("numpy<2", "num2words>=0.5.10"), "*": ("numpy<2",)}

    def requirements_for(self, handler: str, params: dict[str, str] | None = None) -> tuple[str, ...]:
        extra = ("pynini>=2.1.5",) if handler == "tts_preprocess" and (params or {}).get("wfst_tokenizer_model") \
            else ()
        return super().requirements_for(handler) + extra

    # -- graphs -----------------------------------------------------------------------------------------------------
    def check_graph(self, job: NetworkJob, model: Any) -> Any:
        from servicemaker.deploy import graph as graphs
        from servicemaker.speech import synthesis

        sig = graphs.signature(model, job.where)
        if job.component == GENERATOR:
            info, problems = synthesis.fastpitch_interface(sig)
            if not problems and job.target == "tensorrt" and info["layout"] == synthesis.RAGGED:
                sig, info = self._unragged(model, info, job.where)
            if not problems:
                problems += self._front_end_problems(job, model, info)
        else:
            info, problems = synthesis.hifigan_interface(sig)
            if not problems:
                problems += self._vocoder_problems(job, model, info)
        _refuse(job.where, job.spec.pipeline, problems)
        job.state["interface"] = info
        return sig

    def check_scanned_graph(self, pipeline: Pipeline, graph: GraphScan, component: str) -> None:
        from servicemaker.speech import synthesis

        sig = graph.signature()
        check = synthesis.fastpitch_interface if component == GENERATOR else synthesis.hifigan_interface
        _refuse(graph.where, pipeline.name, check(sig)[1])

    def check_configs(self, pipeline: Pipeline, configs: dict[str, Any], params: dict[str, dict[str, Any]]
                      ) -> list[str]:
        """At svc-build, what the two model configs and the flags must agree on (see :func:`config_problems`); the
        symbol table against FastPitch's embedding and mapping.txt wait for svc-deploy (the graph and staged
        files)."""
        return config_problems(configs.get(GENERATOR) or {}, configs.get(VOCODER) or {}, params["preprocessor"],
                               params[VOCODER]["sample_rate"],
                               phone_file=params["preprocessor"].get("phone_dictionary_file"))

    def saved_state(self, job: NetworkJob) -> dict[str, Any]:
        """The graph's interface, and for FastPitch how its sentences may batch (measured by network_graph)."""
        return {"interface": job.state["interface"]}

    def restore_state(self, job: NetworkJob, saved: Any) -> dict[str, Any]:
        if not isinstance(saved, dict) or set(saved) != {"interface"} or not isinstance(saved["interface"], dict):
            raise ValueError("the TTS network state is not its interface")
        info = saved["interface"]
        if job.component == GENERATOR and info.get("sentence_batching") not in ("any", "equal_symbols", "single"):
            raise ValueError("the FastPitch state has no sentence batching")
        return {"interface": info}

    def network_graph(self, job: NetworkJob, folded: Any) -> Any:
        """FastPitch: the padding leak masked (:func:`servicemaker.speech.synthesis.mask_padding`), then measured:
        sentences of different lengths batched against each alone; how they may batch goes to the synthesizers."""
        if job.component != GENERATOR:
            return folded
        from servicemaker.speech import synthesis, tts_feeds

        info = job.state["interface"]
        report: dict[str, Any] = {}
        if info.get("unragged"):
            if not synthesis.unragged(folded):
                raise ValidationError(f"{job.where}: FastPitch's batching loop could not be cut out for TensorRT",
                                      hint="deploy with --target onnxruntime, or export FastPitch without ragged "
                                           "batches")
            report["unragged"] = ("the ragged batching loop (TensorRT-RTX's builder fails on it) is cut out: the "
                                  "engine takes the padded [batch, symbols] batch it made")
        masked = synthesis.mask_padding(folded)
        sentences = [r for r in (self._tokenizer(job).encode(t) for t in tts_feeds.LEAK_PROBE) if r]
        info["sentence_batching"] = tts_feeds.measure_batching(folded, sentences, info, info["pad_id"])
        job.state["report"] = {**report, "padding_leak": {**masked, "sentence_batching": info["sentence_batching"]}}
        return folded

    @staticmethod
    def _unragged(model: Any, info: dict[str, Any], where: str) -> tuple[Any, dict[str, Any]]:
        """The signature and interface the TensorRT target's FastPitch gets: the padded core of the ragged export
        (:func:`servicemaker.speech.synthesis.unragged`), or the export as it is where that cannot be cut out."""
        import copy

        from servicemaker.deploy import graph as graphs
        from servicemaker.speech import synthesis

        padded = copy.deepcopy(model)
        graphs.remove_optionals(padded)
        if not synthesis.unragged(padded):
            return graphs.signature(model, where), info
        sig = graphs.signature(padded, where)
        new, _ = synthesis.fastpitch_interface(sig)
        return sig, {**new, "unragged": True}

    def network_batched(self, job: NetworkJob) -> bool:
        return not (job.component == GENERATOR and job.state["interface"]["layout"] == "ragged")

    def network_handler(self, job: NetworkJob) -> str:
        return "onnx" if self.network_batched(job) else "onnx_requests"

    def engine_profile(self, job: NetworkJob) -> dict[str, tuple[tuple[int, ...], ...]]:
        """FastPitch: 1..max_batch_size sentences of 1..(max_sentence_chars + 2) symbols; HiFi-GAN: 1..max_batch_size
        spectrograms of 1..the longest chunk the synthesizers vocode."""
        batch = int(job.params["max_batch_size"])
        info = job.state["interface"]
        if job.component == GENERATOR:
            longest = int(job.component_params("preprocessor")["max_sentence_chars"]) + 2
            opt = max(1, (batch + 1) // 2)
            if info["layout"] == "ragged":
                out = {n: ((1,), (opt * longest // 2,), (batch * longest,)) for n in info["inputs"]
                       if n in ("text", "pitch", "pace", "volume")}
                out["batch_lengths"] = ((2,), (opt + 1,), (batch + 1,))
            else:
                out = {n: ((1, 1), (opt, longest // 2), (batch, longest)) for n in info["inputs"]
                       if n in ("text", "pitch", "pace", "volume")}
            if info["speaker"]:
                out["speaker"] = ((1,), (opt,), (batch,))
            return out
        frames = [int(job.component_params("synthesizer")["max_vocoder_frames"])]
        stream = job.component_params("streaming_synthesizer")
        largest = max(int(stream["chunk_frames"]), int(stream["max_chunk_frames"]))
        frames.append(largest + 2 * int(stream["overlap_frames"]))
        n_mels = int(info["n_mels"])
        return {info["input"]: ((1, n_mels, 1), (max(1, (batch + 1) // 2), n_mels, min(frames)),
                                (batch, n_mels, max(frames)))}

    def sample_feeds(self, job: NetworkJob) -> SampleFeeds:
        """FastPitch: servicemaker's English sentences through the model's own tokenizer; HiFi-GAN: the bundled
        speech resampled to the voice's rate, as mel spectrograms made with the vocoder's own preprocessor
        settings (a centred STFT)."""
        for given, role in ((job.calibration_path, "calibration_data"), (job.gate_path, "gate_data")):
            if given is not None:
                raise ValidationError(f"{job.where}: {job.component}.{role} is not supported for speech_synthesis "
                                      "yet", hint="rebuild without it; servicemaker's sentences and speech are used")
        from servicemaker.speech import tts_feeds

        if job.component == GENERATOR:
            tokenizer = self._tokenizer(job)
            make = lambda name: tts_feeds.symbol_feeds(name, tokenizer, job.state["interface"])  # noqa: E731
            return SampleFeeds(make("calibration"), make("samples"), "servicemaker's English sentences")
        config = self._config(job, VOCODER)
        rate = int(job.params["sample_rate"])
        return SampleFeeds(tts_feeds.mel_feeds("calibration", config, rate, job.state["interface"]),
                           tts_feeds.mel_feeds("samples", config, rate, job.state["interface"]),
                           "servicemaker's bundled synthesized English utterances")

    def gate(self, job: NetworkJob, reference: list[dict[str, Any]], optimized: list[dict[str, Any]],
             feeds: list[dict[str, Any]]) -> dict[str, Any] | None:
        """FastPitch: how many sentences changed their frame count (a duration rounding the other way)."""
        if job.component != GENERATOR:
            return None
        changed = total = 0
        for ref, opt in zip(reference, optimized):
            r, o = ref["num_frames"].reshape(-1), opt["num_frames"].reshape(-1)
            total += len(r)
            changed += int((r != o).sum()) if r.shape == o.shape else len(r)
        return {"sentences": total, "frames_changed": changed}

    def model_params(self, jobs: dict[str, NetworkJob], component: str) -> dict[str, str]:
        gen, voc = jobs[GENERATOR], jobs[VOCODER]
        rate = str(voc.params["sample_rate"])
        if component == "preprocessor":
            config = self._config(gen, GENERATOR)
            return {"text_tokenizer": json.dumps(config.get("text_tokenizer") or {}, sort_keys=True),
                    "speaker_input": str(gen.state["interface"]["speaker"]).lower()}
        if component in SYNTHESIZERS:
            fp, hg = gen.state["interface"], voc.state["interface"]
            return {
                "network_models": network_models({
                    GENERATOR: (jobs[GENERATOR].model_names[GENERATOR], ("spect", "num_frames"),
                                self.network_batched(gen)),
                    VOCODER: (voc.model_names[VOCODER], (hg["output"],), True)}),
                "spectrogram_layout": fp["layout"], "spectrogram_inputs": ",".join(fp["inputs"]),
                "sentence_batching": fp["sentence_batching"], "symbol_pad": str(fp["pad_id"]),
                "speaker_dtype": fp["speaker_dtype"] or "", "lengths_dtype": fp["lengths_dtype"] or "",
                "vocoder_input": hg["input"], "hop_length": str(hg["hop"]), "sample_rate": rate,
                "generator_max_batch": str(gen.params["max_batch_size"]),
                "vocoder_max_batch": str(voc.params["max_batch_size"]),
            }
        return {}

    # -- helpers ----------------------------------------------------------------------------------------------------
    @staticmethod
    def _config(job: NetworkJob, which: str) -> dict[str, Any]:
        """The model_config.yaml of the FastPitch or HiFi-GAN export, read once per deploy."""
        from servicemaker import yamlio
        from servicemaker.errors import ArchiveError

        key = f"config:{which}"
        if key not in job.state:
            path = job.files["preprocessor"]["model_config"] if which == GENERATOR else \
                job.files["synthesizer"]["vocoder_config"]
            try:
                config = yamlio.load(path.read_bytes())
            except yamlio.YamlError as err:
                raise ArchiveError(f"{job.where}: model_config.yaml is not valid YAML: {err}",
                                   hint="rebuild the RMIR from an intact export") from None
            job.state[key] = config if isinstance(config, dict) else {}
        return job.state[key]

    def _tokenizer(self, job: NetworkJob) -> Any:
        """The voice's tokenizer over the staged files, made once per deploy (its dictionary read once)."""
        if "tokenizer" not in job.state:
            job.state["tokenizer"] = self._make_tokenizer(job)
        return job.state["tokenizer"]

    def _make_tokenizer(self, job: NetworkJob) -> Any:
        from servicemaker.runtime import tts_text

        files = job.files.get("preprocessor", {})
        config = self._config(job, GENERATOR).get("text_tokenizer") or {}
        phones = files.get("phone_dictionary_file") or files.get("phone_dict")
        try:
            return tts_text.from_config(config, str(phones) if phones else None,
                                        str(files["heteronyms"]) if "heteronyms" in files else None)
        except (tts_text.TokenizerError, OSError, UnicodeDecodeError) as err:
            raise ValidationError(f"{job.where}: the model's text tokenizer cannot be reproduced: {err}",
                                  hint="export FastPitch with one of NeMo's English tokenizers, or give "
                                       "--phone_dictionary_file") from None

    def _front_end_problems(self, job: NetworkJob, model: Any, info: dict[str, Any]) -> list[str]:
        """The tokenizer's symbol table against FastPitch's embedding and nemo2riva's mapping.txt; the phone set,
        speakers and sample rate against the flags."""
        from servicemaker.runtime import tts_text
        from servicemaker.speech import synthesis

        problems: list[str] = []
        tokenizer = self._tokenizer(job)
        info["pad_id"] = tokenizer.pad
        rows = synthesis.embedding_rows(model)
        if rows is not None and rows != len(tokenizer.tokens):
            problems.append(f"the text tokenizer has {len(tokenizer.tokens)} symbols but FastPitch's embedding has "
                            f"{rows} rows (a different tokenizer or phone dictionary than the model was trained with)")
        mapping = job.files.get("preprocessor", {}).get("mapping")
        if mapping is not None:
            diff = tts_text.check_mapping(tokenizer, mapping.read_text(encoding="utf-8", errors="replace"))
            if diff is not None:
                problems.append(f"nemo2riva's mapping.txt does not match the model's tokenizer: {diff}")
        pre = job.component_params("preprocessor")
        if int(pre["num_speakers"]) > 1 and not info["speaker"]:
            problems.append(f"--num_speakers={pre['num_speakers']} but the graph has no speaker input")
        return problems + config_problems(self._config(job, GENERATOR), self._config(job, VOCODER), pre,
                                          job.component_params(VOCODER)["sample_rate"], phone_file="given")

    def _vocoder_problems(self, job: NetworkJob, model: Any, info: dict[str, Any]) -> list[str]:
        from servicemaker.speech import synthesis

        problems: list[str] = []
        if info["n_mels"] is None:
            return [f"the vocoder's input {info['input']} has no fixed number of mel bands"]
        mels = self._config(job, GENERATOR).get("n_mel_channels")
        if isinstance(mels, int) and mels != info["n_mels"]:
            problems.append(f"FastPitch makes {mels} mel bands but the vocoder takes {info['n_mels']}")
        try:
            info["hop"] = synthesis.hop_of(model, info["n_mels"])
        except Exception as err:  # noqa: BLE001 - any failure to run the graph is the graph's problem
            return [f"the vocoder graph does not run on a {info['n_mels']}-band spectrogram: "
                    f"{str(err).splitlines()[0][:200]}"]
        return problems


def config_problems(fastpitch: dict[str, Any], hifigan: dict[str, Any], pre: dict[str, Any], rate: int,
                    phone_file: Any = None) -> list[str]:
    """What the FastPitch and HiFi-GAN configs and the flags must agree on, checked at svc-build and svc-deploy: a
    tokenizer servicemaker reproduces (and a phone dictionary for a phoneme one: the config's artifact, or
    ``phone_file``), ``--phone_set``, the subvoices, the sample rates and mel bands of the two models."""
    from servicemaker.runtime import tts_text

    problems: list[str] = []
    tokenizer = fastpitch.get("text_tokenizer") or {}
    try:
        kind = tts_text.tokenizer_class(tokenizer)
    except tts_text.TokenizerError as err:
        return [str(err)]
    if kind != tts_text.CHARS and not ((tokenizer.get("g2p") or {}).get("phoneme_dict") or phone_file):
        problems.append(f"{kind} needs a phone dictionary: the model config's text_tokenizer.g2p.phoneme_dict names "
                        "none; give --phone_dictionary_file")
    if tokenizer.get("locale") not in (None, "en-US"):
        problems.append(f"{kind} locale {tokenizer['locale']!r}: servicemaker reproduces en-US only")
    phone_set = {tts_text.ARPABET: "arpabet", tts_text.IPA: "ipa"}.get(kind, "none (characters)")
    if pre["phone_set"] != "auto" and pre["phone_set"] != phone_set:
        problems.append(f"--phone_set={pre['phone_set']} but the model's tokenizer uses {phone_set}")
    problems += _subvoice_problems(str(pre.get("subvoices") or ""), int(pre["num_speakers"]))
    trained = fastpitch.get("sample_rate")
    if isinstance(trained, int) and trained != rate:
        problems.append(f"FastPitch was trained at {trained} Hz but the vocoder's sample rate is {rate} Hz")
    mels = fastpitch.get("n_mel_channels")
    section = hifigan.get("preprocessor") or {}
    bands = section.get("nfilt", section.get("features")) if isinstance(section, dict) else None
    if isinstance(mels, int) and isinstance(bands, int) and mels != bands:
        problems.append(f"FastPitch makes {mels} mel bands but the vocoder was trained on {bands}")
    return problems


def _subvoice_problems(subvoices: str, speakers: int) -> list[str]:
    out = []
    for item in (s for s in subvoices.split(",") if s.strip()):
        name, sep, ident = item.partition(":")
        if not sep or not name.strip() or not ident.strip().isdigit():
            out.append(f"--subvoices item {item!r} is not NAME:ID")
        elif int(ident) >= speakers:
            out.append(f"--subvoices {name.strip()} has speaker id {ident}, but the model has {speakers} speaker(s)")
    return out


def _refuse(where: str, pipeline: str, problems: list[str]) -> None:
    refuse(where, pipeline, problems, "export FastPitch and HiFi-GAN with NeMo (nemo2riva), in that order, "
                                      "trained for the same mel bands and sample rate")


FAMILY = TtsFamily()
