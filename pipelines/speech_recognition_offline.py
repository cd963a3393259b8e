"""speech_recognition_offline (``svc-build speech_recognition --offline``): AUDIO_SIGNAL → TRANSCRIPT, words and
their times, one utterance per batch row; requests of different lengths batch together.
"""

from servicemaker.pipeline import Ensemble, InputSlot, Pipeline, Step
from servicemaker.pipelines import _asr

PIPELINE = Pipeline(
    name="speech_recognition_offline",
    help="offline CTC speech recognition (NeMo EncDecCTCModel / EncDecCTCModelBPE), whole utterances",
    family="asr",
    inputs=(InputSlot(name="model", model_classes=_asr.MODEL_CLASSES, primary="nn"),),
    ensemble_name="riva-asr-{language_code}-offline",
    aliases=_asr.ALIASES,
    components=(
        _asr.featurizer("asr_audio", "{name}-feature-extractor-offline", streaming=False),
        _asr.network("riva-{runtime}-{name}-am-offline"),
        _asr.decoder("ctc_decode", "{name}-ctc-decoder-cpu-offline", streaming=False),
    ),
    ensemble=Ensemble(
        inputs=_asr.AUDIO_INPUTS,
        outputs=_asr.TRANSCRIPT_OUTPUTS,
        steps=(
            Step(component="featurizer", inputs={"AUDIO_SIGNAL": "AUDIO_SIGNAL", "SAMPLE_RATE": "SAMPLE_RATE"},
                 outputs={"audio_signal": "audio_signal", "length": "length"}),
            Step(component="nn", inputs={"audio_signal": "audio_signal", "length": "length"},
                 outputs={"logprobs": "logprobs", "encoded_lengths": "encoded_lengths"}),
            Step(component="ctc_decoder", inputs={"logprobs": "logprobs", "encoded_lengths": "encoded_lengths"},
                 outputs=dict(_asr.DECODED)),
        ),
    ),
)
