"""speech_synthesis: TEXT → AUDIO, with a FastPitch spectrogram generator and a HiFi-GAN vocoder (two inputs)."""

from servicemaker.pipeline import (Bind, Component, Ensemble, InputSlot, Param, Pipeline, Step, Tensor,
                                   network_params, serving_params)

PIPELINE = Pipeline(
    name="speech_synthesis",
    help="text to speech (NeMo FastPitchModel + HifiGanModel, one export each)",
    family="tts",
    inputs=(
        InputSlot(name="spectrogram_generator", model_classes=("FastPitchModel",), primary="spectrogram_generator"),
        InputSlot(name="vocoder", model_classes=("HifiGanModel",), primary="vocoder"),
    ),
    ensemble_name="riva-tts-{language_code}",
    components=(
        Component(name="preprocessor", kind="python", model_name="riva-tts-preprocessor-{language_code}",
                  help="text normalization and symbol ids for the spectrogram generator",
                  params=serving_params() + (
                      Param(name="pace", type="float", min=0.2, max=5.0, default=1.0, help="speaking rate factor"),
                  ),
                  binds=(Bind(role="model_config", input="spectrogram_generator", pattern="model_config.yaml"),)),
        Component(name="spectrogram_generator", kind="network",
                  model_name="riva-{runtime}-riva-tts-fastpitch-{language_code}",
                  help="FastPitch: symbol ids → mel spectrogram", params=network_params(),
                  binds=(Bind(role="graph", input="spectrogram_generator", pattern="*.onnx"),)),
        Component(name="vocoder", kind="network", model_name="riva-{runtime}-riva-tts-hifigan-{language_code}",
                  help="HiFi-GAN: mel spectrogram → waveform",
                  params=network_params() + (
                      Param(name="sample_rate", type="int", min=8000, max=96000, default=22050,
                            from_config="sample_rate", help="output sample rate in Hz"),
                  ),
                  binds=(Bind(role="graph", input="vocoder", pattern="*.onnx"),
                         Bind(role="model_config", input="vocoder", pattern="model_config.yaml"))),
    ),
    ensemble=Ensemble(
        inputs=(Tensor(name="TEXT", dtype="STRING", dims=(1,)),),
        outputs=(Tensor(name="AUDIO", dtype="FP32", dims=(-1,)),),
        steps=(
            Step(component="preprocessor", inputs={"TEXT": "TEXT"}, outputs={"text": "symbols"}),
            Step(component="spectrogram_generator", inputs={"text": "symbols"}, outputs={"spect": "spect"}),
            Step(component="vocoder", inputs={"spec": "spect"}, outputs={"audio": "AUDIO"}),
        ),
    ),
)
