"""speech_recognition: AUDIO (mono float samples) → TRANSCRIPT, with a CTC acoustic model."""

from servicemaker.pipeline import (Bind, Component, Ensemble, InputSlot, Param, Pipeline, Step, Tensor,
                                   network_params, serving_params)

PIPELINE = Pipeline(
    name="speech_recognition",
    help="offline CTC speech recognition (NeMo EncDecCTCModel / EncDecCTCModelBPE)",
    family="asr",
    inputs=(InputSlot(name="model", model_classes=("EncDecCTCModel", "EncDecCTCModelBPE"), primary="nn"),),
    ensemble_name="riva-asr-{language_code}",
    components=(
        Component(name="featurizer", kind="python", model_name="riva-asr-feature-extractor-{language_code}",
                  help="log-mel features as the model's preprocessor computes them",
                  params=serving_params() + (
                      Param(name="sample_rate", type="int", min=8000, max=96000, default=16000,
                            from_config="preprocessor.sample_rate", help="audio sample rate in Hz"),
                      Param(name="features", type="int", min=1, max=512, default=80,
                            from_config="preprocessor.features", help="mel bands"),
                      Param(name="window_size", type="float", min=0.001, max=1.0, default=0.025,
                            from_config="preprocessor.window_size", help="window length in seconds"),
                      Param(name="window_stride", type="float", min=0.001, max=1.0, default=0.01,
                            from_config="preprocessor.window_stride", help="hop length in seconds"),
                      Param(name="n_fft", type="int", min=16, max=65536, default=512,
                            from_config="preprocessor.n_fft", help="FFT size"),
                  )),
        Component(name="nn", kind="network", model_name="riva-{runtime}-riva-asr-am-{language_code}",
                  help="the CTC acoustic model", params=network_params(precision="fp16"),
                  binds=(Bind(role="graph", pattern="*.onnx"), Bind(role="model_config", pattern="model_config.yaml"))),
        Component(name="ctc_decoder", kind="python", model_name="riva-asr-ctc-decoder-{language_code}",
                  help="greedy CTC decoding over decoder.vocabulary (BPE pieces joined)",
                  params=serving_params(),
                  binds=(Bind(role="tokenizer_model", config_key="tokenizer.model", required=False),)),
    ),
    ensemble=Ensemble(
        inputs=(Tensor(name="AUDIO", dtype="FP32", dims=(-1,)),),
        outputs=(Tensor(name="TRANSCRIPT", dtype="STRING", dims=(1,)),),
        steps=(
            Step(component="featurizer", inputs={"AUDIO": "AUDIO"},
                 outputs={"audio_signal": "audio_signal", "length": "length"}),
            Step(component="nn", inputs={"audio_signal": "audio_signal", "length": "length"},
                 outputs={"logprobs": "logprobs"}),
            Step(component="ctc_decoder", inputs={"logprobs": "logprobs"}, outputs={"TRANSCRIPT": "TRANSCRIPT"}),
        ),
    ),
)
