"""speech_synthesis: TEXT → AUDIO with a FastPitch spectrogram generator and a HiFi-GAN vocoder (two inputs, in
Riva's order: FastPitch first).

Two ensembles share the text front end and the networks: ``fastpitch_hifigan_ensemble-<voice>`` answers a request
with the whole audio; ``fastpitch_hifigan_ensemble-<voice>-streaming`` (decoupled) with audio chunks as they are
made. The synthesizers run FastPitch and HiFi-GAN as models of the repository (business logic scripting), so the
networks batch across requests and can be TensorRT engines.
"""

from servicemaker.pipeline import Ensemble, InputSlot, Pipeline, Step, Tensor
from servicemaker.pipelines import _tts

_INPUTS = {"TEXT": "TEXT", "SPEAKER": "SPEAKER", "PACE": "PACE", "PITCH_SHIFT": "PITCH_SHIFT"}


def _ensemble(synthesizer: str) -> Ensemble:
    return Ensemble(
        inputs=(Tensor(name="TEXT", dtype="STRING", dims=(1,)),
                Tensor(name="SPEAKER", dtype="INT32", dims=(1,), optional=True),
                Tensor(name="PACE", dtype="FP32", dims=(1,), optional=True),
                Tensor(name="PITCH_SHIFT", dtype="FP32", dims=(1,), optional=True)),
        outputs=(Tensor(name="AUDIO", dtype="FP32", dims=(-1,)), Tensor(name="SAMPLE_RATE", dtype="INT32", dims=(1,))),
        steps=(Step(component="preprocessor", inputs=_INPUTS, outputs=dict(_tts.SYMBOLS)),
               Step(component=synthesizer, inputs=dict(_tts.SYMBOLS),
                    outputs={"AUDIO": "AUDIO", "SAMPLE_RATE": "SAMPLE_RATE"})),
    )


PIPELINE = Pipeline(
    name="speech_synthesis",
    help="text to speech (NeMo FastPitchModel, then HifiGanModel: one export each)",
    family="tts",
    inputs=(
        InputSlot(name="spectrogram_generator", model_classes=("FastPitchModel",), primary="spectrogram_generator"),
        InputSlot(name="vocoder", model_classes=("HifiGanModel",), primary="vocoder"),
    ),
    ensemble_name="fastpitch_hifigan_ensemble-{voice_name}",
    name_params={"voice_name": "preprocessor.voice_name"},
    aliases=_tts.ALIASES,
    ordered_inputs=True,
    components=(
        _tts.preprocessor(),
        _tts.spectrogram_generator(),
        _tts.vocoder(),
        _tts.synthesizer("synthesizer", "tts_synthesize", "tts_synthesizer-{voice_name}"),
        _tts.synthesizer("streaming_synthesizer", "tts_synthesize_stream", "tts_synthesizer_streaming-{voice_name}"),
    ),
    ensemble=_ensemble("synthesizer"),
    extra_ensembles={"-streaming": _ensemble("streaming_synthesizer")},
)
