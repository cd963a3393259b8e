"""intent_slot: TEXT → INTENT, INTENT_SCORE, TOKENS (words), SLOTS."""

from servicemaker.pipeline import Bind, Ensemble, InputSlot, Pipeline, Step, Tensor

from servicemaker.pipelines import _nlp

PIPELINE = Pipeline(
    name="intent_slot",
    help="joint intent and slot classification (NeMo IntentSlotClassificationModel)",
    family="nlp",
    inputs=(InputSlot(name="model", model_classes=("IntentSlotClassificationModel",), primary="nn"),),
    default_domain_name="misc",
    ensemble_name="riva_intent_{domain_name}",
    components=(
        _nlp.tokenizer("intent_slot_tokenizer-{domain_name}", extra=(_nlp.DOC_STRIDE, _nlp.LONG_INPUT)),
        _nlp.network("riva-{runtime}-riva_intent_{domain_name}-nn-{pretrained_model_name}"),
        _nlp.python("label_tokens", "intent_slot_label_tokens_{domain_name}", "intent and per-token slot decoding", handler="intent_slots",
                    binds=(Bind(role="intent_labels", config_key="class_labels.intent_labels_file"),
                           Bind(role="slot_labels", config_key="class_labels.slot_labels_file"))),
        _nlp.python("detokenizer", "intent_slot_detokenizer", "merge subword slots back onto the input words", handler="slot_words"),
    ),
    ensemble=Ensemble(
        inputs=(_nlp.TEXT,),
        outputs=(Tensor(name="INTENT", dtype="STRING", dims=(1,)), Tensor(name="INTENT_SCORE", dtype="FP32", dims=(1,)),
                 Tensor(name="TOKENS", dtype="STRING", dims=(-1,)), Tensor(name="SLOTS", dtype="STRING", dims=(-1,))),
        steps=(
            Step(component="tokenizer", inputs={"TEXT": "TEXT"}, outputs={**_nlp.ENCODED, **_nlp.WORDS, **_nlp.ROWS}),
            Step(component="nn", inputs=dict(_nlp.ENCODED),
                 outputs={"intent_logits": "intent_logits", "slot_logits": "slot_logits"}),
            Step(component="label_tokens", inputs={"intent_logits": "intent_logits", "slot_logits": "slot_logits", **_nlp.ROWS},
                 outputs={"INTENT": "INTENT", "INTENT_SCORE": "INTENT_SCORE", "slot_labels": "slot_labels"}),
            Step(component="detokenizer", inputs={"slot_labels": "slot_labels", **_nlp.WORDS, **_nlp.ROWS},
                 outputs={"TOKENS": "TOKENS", "SLOTS": "SLOTS"}),
        ),
    ),
)
