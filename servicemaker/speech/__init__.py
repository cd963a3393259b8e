"""Speech (ASR) graph building: NeMo's featurizer as ONNX, fused with acoustic models."""
