"""The pipelines svc-build and svc-deploy know, as an explicit registry (name → Pipeline).

Adding a pipeline: write one module here that defines ``PIPELINE``, add it to ``REGISTRY``, add its model
classes' schemas to ``schemas/`` and a sample; the tests are parametrized over this registry.
"""

from __future__ import annotations

from servicemaker.errors import UsageError, ValidationError
from servicemaker.family import Family
from servicemaker.pipeline import Pipeline
from servicemaker.pipelines import (_asr, _nlp, _tts, intent_slot, punctuation, qa, speech_recognition,
                                    speech_recognition_offline, speech_synthesis, text_classification,
                                    token_classification)

REGISTRY: dict[str, Pipeline] = {
    "text_classification": text_classification.PIPELINE,
    "token_classification": token_classification.PIPELINE,
    "intent_slot": intent_slot.PIPELINE,
    "punctuation": punctuation.PIPELINE,
    "qa": qa.PIPELINE,
    "speech_recognition": speech_recognition.PIPELINE,
    "speech_recognition_offline": speech_recognition_offline.PIPELINE,
    "speech_synthesis": speech_synthesis.PIPELINE,
}


#: family name → its deploy hooks (see servicemaker/family.py); a pipeline names its family
FAMILIES: dict[str, Family] = {
    "nlp": _nlp.FAMILY,
    "asr": _asr.FAMILY,
    "tts": _tts.FAMILY,
}


def get_family(pipeline: Pipeline) -> Family:
    try:
        return FAMILIES[pipeline.family]
    except KeyError:
        raise ValidationError(f"svc-deploy cannot deploy the {pipeline.name} pipeline yet",
                              hint="deployable pipelines: " + ", ".join(
                                  n for n, p in REGISTRY.items() if p.family in FAMILIES)) from None


def get_pipeline(name: str) -> Pipeline:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown pipeline '{name}'", hint=f"pipelines: {', '.join(REGISTRY)}") from None


def variant(pipeline: Pipeline, overrides: dict[str, str]) -> Pipeline:
    """The pipeline a switch such as ``--offline`` selects (the switch is consumed from ``overrides``)."""
    for flag, other in pipeline.variants.items():
        if flag in overrides:
            raw = overrides.pop(flag).strip().lower()
            if raw in ("true", "1", "yes", "on"):
                return get_pipeline(other)
            if raw not in ("false", "0", "no", "off"):
                raise UsageError(f"--{flag}={raw}: expected true or false")
    return pipeline


def pipelines_for_class(model_class: str) -> list[str]:
    return [name for name, p in REGISTRY.items() if model_class in p.accepted_classes()]
