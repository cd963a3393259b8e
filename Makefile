# Two entry points, both doing all set-up themselves on a fresh machine (a venv in .venv):
#   make demo   — sample exports (MiniLM text classification; a small speech model trained here) → svc-build →
#                 svc-deploy → a real Triton server answers a sentence and transcribes a spoken one
#   make test   — the test suite (CPU only)
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo-out

.PHONY: demo test clean

$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/svc-samples $(DEMO) -p text_classification -p speech_recognition
	$(BIN)/svc-build text_classification $(DEMO)/text_classification.rmir $(DEMO)/text_classification.riva \
		--domain_name=weather -f
	$(BIN)/svc-build speech_recognition $(DEMO)/asr.rmir $(DEMO)/speech_recognition.riva --offline \
		--name=asr-offline -f
	$(BIN)/svc-inspect $(DEMO)/text_classification.rmir
	$(BIN)/svc-deploy $(DEMO)/text_classification.rmir $(DEMO)/asr.rmir $(DEMO)/model_repository \
		--target onnxruntime-python -f
	$(BIN)/svc-serve $(DEMO)/model_repository --http-port 0 --grpc-port 0 --metrics-port 0 \
		--query "is it going to snow in berlin tomorrow"
	@echo "spoken: $$(cat $(DEMO)/speech_recognition.txt)"
	$(BIN)/svc-serve $(DEMO)/model_repository --http-port 0 --grpc-port 0 --metrics-port 0 \
		--audio $(DEMO)/speech_recognition.wav

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
