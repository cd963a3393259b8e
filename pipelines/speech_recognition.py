"""speech_recognition (streaming, Riva's default): AUDIO_SIGNAL chunks of a sequence → TRANSCRIPT so far, IS_FINAL.

Triton's sequence batcher drives the front end and the decoder (per-stream state keyed by the correlation id); the
front end runs the network (featurizer + acoustic model) on windows of left padding + chunk + right padding, as
NeMo's buffered CTC inference and Riva do. ``--offline`` builds :mod:`.speech_recognition_offline` instead.
"""

from servicemaker.pipeline import Ensemble, InputSlot, Pipeline, Step, Tensor
from servicemaker.pipelines import _asr

PIPELINE = Pipeline(
    name="speech_recognition",
    help="streaming CTC speech recognition (NeMo EncDecCTCModel / EncDecCTCModelBPE); --offline for offline",
    family="asr",
    inputs=(InputSlot(name="model", model_classes=_asr.MODEL_CLASSES, primary="nn"),),
    ensemble_name="riva-asr-{language_code}-streaming",
    aliases=_asr.STREAMING_ALIASES,
    variants={"offline": "speech_recognition_offline"},
    components=(
        _asr.featurizer("asr_stream", "{name}-feature-extractor-streaming", streaming=True),
        _asr.network("riva-{runtime}-{name}-am-streaming"),
        _asr.decoder("ctc_decode_stream", "{name}-ctc-decoder-cpu-streaming", streaming=True),
    ),
    ensemble=Ensemble(
        inputs=_asr.AUDIO_INPUTS,
        outputs=_asr.TRANSCRIPT_OUTPUTS + (Tensor(name="IS_FINAL", dtype="BOOL", dims=(1,)),),
        steps=(
            Step(component="featurizer", inputs={"AUDIO_SIGNAL": "AUDIO_SIGNAL", "SAMPLE_RATE": "SAMPLE_RATE"},
                 outputs={"logprobs": "logprobs"}),
            Step(component="ctc_decoder", inputs={"logprobs": "logprobs"},
                 outputs={**_asr.DECODED, "IS_FINAL": "IS_FINAL"}),
        ),
    ),
)
