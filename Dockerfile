# syntax=docker/dockerfile:1
# The ServiceMaker image: svc-build, svc-deploy, svc-inspect, svc-serve and a CPU Triton (the one nvidia-pytriton
# bundles, Python backend only). Build it with `make image` (docker/build-image.sh); see docs/image.md.
#
# BASE must be a Debian-family image with python3 (3.10-3.13) and its venv module, the shared libpython (the Triton
# Python-backend stub links it) and useradd. `make image` makes one with debootstrap when none is given; for a stock
# image name the packages it lacks in RUNTIME_APT_PACKAGES (e.g. "python3 python3-venv libpython3.11 passwd").
# The GPU variant (docs/image.md) uses an NVIDIA Triton/TensorRT image as BASE.
ARG BASE=localhost/debian-local:bookworm

FROM ${BASE} AS builder
# What the builder needs on top of BASE: a C++ toolchain and Python headers, for KenLM (no binary wheel exists).
ARG BUILD_APT_PACKAGES="g++ make python3-dev zlib1g-dev libbz2-dev liblzma-dev"
ARG RUNTIME_APT_PACKAGES=""
# Set by the build script to a read-only wheel folder mounted into the build (pip's find-links), if the host has one.
ARG PIP_FIND_LINKS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_DEFAULT_TIMEOUT=180
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Distribution packages follow the BASE image (pin BASE by tag or digest); they are not pinned one by one.
# hadolint ignore=DL3008,SC2086
RUN apt-get update \
 && apt-get install -y --no-install-recommends ${BUILD_APT_PACKAGES} ${RUNTIME_APT_PACKAGES} \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY docker/requirements.txt /src/docker/requirements.txt
# The pinned dependency closure first (a layer that survives source edits). The CA bundle of an intercepting proxy,
# if any, comes in as a build secret: it is never written to a layer.
RUN --mount=type=secret,id=ca,target=/run/secrets/ca.crt \
    if [ -s /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi \
 && python3 -m venv /opt/servicemaker/venv \
 && export PIP_CONSTRAINT=/src/docker/requirements.txt \
 && /opt/servicemaker/venv/bin/python -m pip install --upgrade pip setuptools wheel \
 && /opt/servicemaker/venv/bin/python -m pip install -r /src/docker/requirements.txt \
 && /opt/servicemaker/venv/bin/python -m pip uninstall -y cmake
COPY pyproject.toml README.md /src/
COPY servicemaker /src/servicemaker
COPY pipelines /src/pipelines
COPY schemas /src/schemas
COPY templates /src/templates
COPY plugins /src/plugins
COPY samples /src/samples
# Extra pip packages for a variant, e.g. "tensorrt polygraphy" on the GPU base (docs/image.md); none by default.
ARG EXTRA_PIP_PACKAGES=""
# The servicemaker wheel with its serve and s3 extras; every requirement must already be met by the pins above.
# hadolint ignore=SC2086
RUN --mount=type=secret,id=ca,target=/run/secrets/ca.crt \
    if [ -s /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi \
 && export PIP_CONSTRAINT=/src/docker/requirements.txt \
 && /opt/servicemaker/venv/bin/python -m pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist /src \
 && /opt/servicemaker/venv/bin/python -m pip install --no-index \
      "$(ls /tmp/dist/servicemaker-*.whl)[serve,s3]" \
 && if [ -n "${EXTRA_PIP_PACKAGES}" ]; then \
      /opt/servicemaker/venv/bin/python -m pip install ${EXTRA_PIP_PACKAGES}; fi \
 && /opt/servicemaker/venv/bin/python -m pip check \
 && rm -rf /tmp/dist \
 && find /opt/servicemaker/venv -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE} AS runtime
ARG VERSION=0.0.0
ARG SOURCE=""
ARG REVISION=""
ARG RUNTIME_APT_PACKAGES=""
LABEL org.opencontainers.image.title="servicemaker" \
      org.opencontainers.image.description="Riva-compatible packaging compiler for NVIDIA Triton: svc-build, svc-deploy, svc-inspect, svc-serve and a CPU Triton" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008,SC2086
RUN if [ -n "${RUNTIME_APT_PACKAGES}" ]; then \
      apt-get update && apt-get install -y --no-install-recommends ${RUNTIME_APT_PACKAGES} \
      && rm -rf /var/lib/apt/lists/*; \
    fi
# A non-root user; group 0 owns its home and the work folder so that an arbitrary UID (Kubernetes runAsUser,
# OpenShift) can write there too.
RUN useradd --uid 10001 --gid 0 --create-home --home-dir /home/servicemaker --shell /bin/bash servicemaker \
 && mkdir -p /workspace /models \
 && chown 10001:0 /workspace /models /home/servicemaker \
 && chmod 2775 /workspace /models /home/servicemaker
COPY --from=builder /opt/servicemaker /opt/servicemaker
# The venv's bin comes first: its python3 is the one the Triton Python-backend stub runs models with (numpy<2).
# (A Triton base keeps its own tritonserver on PATH after it: svc-serve prefers that one.)
ENV PATH=/opt/servicemaker/venv/bin:${PATH} \
    HOME=/home/servicemaker \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:0
WORKDIR /workspace
# No HEALTHCHECK: this is first a batch tool image (build, deploy jobs), where a health check has nothing to probe,
# and Kubernetes ignores it anyway. A serving container is probed on Triton's /v2/health/ready by whoever runs it
# (the Helm chart's Deployment does). (HEALTHCHECK NONE would make podman look for systemd timers on every run.)
# No ENTRYPOINT: run any of the tools as the command, e.g. `svc-deploy in.rmir /models`.
CMD ["svc-deploy", "--help"]
