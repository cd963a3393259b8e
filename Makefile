# Two entry points, both doing all set-up themselves on a fresh machine (a venv in .venv):
#   make demo   — sample exports (MiniLM text classification; a small speech model trained here; a FastPitch +
#                 HiFi-GAN voice built in code) → svc-build → svc-deploy → a real Triton server answers a sentence,
#                 transcribes a spoken one and speaks one into a .wav file
#   make test   — the test suite (CPU only); as root with apt-get it first installs what the image and pod tests
#                 need (podman buildah runc debootstrap) if missing, else says those tests will be skipped
#   make image  — the ServiceMaker image localhost/servicemaker:<version> and :latest (podman; docker/build-image.sh
#                 makes its local debootstrap base when no BASE is given; see docs/image.md)
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo-out

# Debian packages the image and pod tests use (podman builds and runs the image; debootstrap makes its base).
SYSTEM_PACKAGES := podman buildah runc debootstrap

.PHONY: demo test clean image system-packages

$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/svc-samples $(DEMO) -p text_classification -p speech_recognition -p speech_synthesis
	$(BIN)/svc-build text_classification $(DEMO)/text_classification.rmir $(DEMO)/text_classification.riva \
		--domain_name=weather --nn.gate_data=$(DEMO)/text_classification_gate.tsv -f
	$(BIN)/svc-build speech_recognition $(DEMO)/asr.rmir $(DEMO)/speech_recognition.riva --offline \
		--name=asr-offline -f
	$(BIN)/svc-build speech_synthesis $(DEMO)/tts.rmir $(DEMO)/fastpitch.riva $(DEMO)/hifigan.riva \
		--voice_name=English-US -f
	$(BIN)/svc-inspect $(DEMO)/text_classification.rmir
	$(BIN)/svc-deploy $(DEMO)/text_classification.rmir $(DEMO)/asr.rmir $(DEMO)/tts.rmir $(DEMO)/model_repository \
		--target onnxruntime-python -f
	$(BIN)/svc-serve $(DEMO)/model_repository --http-port 0 --grpc-port 0 --metrics-port 0 \
		--query "is it going to snow in berlin tomorrow"
	@echo "spoken: $$(cat $(DEMO)/speech_recognition.txt)"
	$(BIN)/svc-serve $(DEMO)/model_repository --http-port 0 --grpc-port 0 --metrics-port 0 \
		--audio $(DEMO)/speech_recognition.wav
	$(BIN)/svc-serve $(DEMO)/model_repository --http-port 0 --grpc-port 0 --metrics-port 0 \
		--say "Hello from servicemaker. It is 9:30 am, and this voice costs \$$0." --out $(DEMO)/speech_synthesis.wav

test: $(BIN)/.installed system-packages
	$(BIN)/python -m pytest -q

image:
	./docker/build-image.sh

# Quiet and idempotent: nothing to do once the tools are on PATH.
system-packages:
	@PATH="$$PATH:/usr/sbin:/sbin"; missing=""; \
	for tool in $(SYSTEM_PACKAGES); do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing$$missing with apt-get (the image and pod tests need them)"; \
		{ DEBIAN_FRONTEND=noninteractive apt-get update -qq \
		  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; } \
		|| echo "could not install$$missing: the image and pod tests will be skipped"; \
	else echo "missing$$missing (needs root and apt-get to install): the image and pod tests will be skipped"; fi

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
