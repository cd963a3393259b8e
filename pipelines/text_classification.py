"""text_classification: TEXT → LABEL, SCORE (softmax probability), LOGITS."""

from servicemaker.pipeline import Bind, Ensemble, InputSlot, Pipeline, Step, Tensor

from servicemaker.pipelines import _nlp

PIPELINE = Pipeline(
    name="text_classification",
    help="sequence classification (NeMo TextClassificationModel)",
    family="nlp",
    inputs=(InputSlot(name="model", model_classes=("TextClassificationModel",), primary="nn"),),
    default_domain_name="misc",
    ensemble_name="riva_text_classification_{domain_name}",
    components=(
        _nlp.tokenizer("text_classification_tokenizer_{domain_name}", handler="tokenize_text",
                       extra=(_nlp.DOC_STRIDE, _nlp.LONG_INPUT)),
        _nlp.network("riva-{runtime}-riva_text_classification_{domain_name}-nn-{pretrained_model_name}"),
        _nlp.python("label_tokens", "text_classification_label_tokens_{domain_name}",
                    "softmax and label lookup (labels file, else the class index)", handler="classify",
                    binds=(Bind(role="labels", config_key="class_labels.class_labels_file", required=False),)),
    ),
    ensemble=Ensemble(
        inputs=(_nlp.TEXT,),
        outputs=(Tensor(name="LABEL", dtype="STRING", dims=(1,)), Tensor(name="SCORE", dtype="FP32", dims=(1,)),
                 Tensor(name="LOGITS", dtype="FP32", dims=(-1,))),
        steps=(
            Step(component="tokenizer", inputs={"TEXT": "TEXT"}, outputs={**_nlp.ENCODED, **_nlp.ROWS}),
            Step(component="nn", inputs=dict(_nlp.ENCODED), outputs={"logits": "logits"}),
            Step(component="label_tokens", inputs={"logits": "logits", **_nlp.ROWS},
                 outputs={"LABEL": "LABEL", "SCORE": "SCORE", "LOGITS": "LOGITS"}),
        ),
    ),
)
