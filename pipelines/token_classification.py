"""token_classification (NER): TEXT → TOKENS (words), LABELS, SCORES."""

from servicemaker.pipeline import Bind, Ensemble, InputSlot, Pipeline, Step, Tensor

from servicemaker.pipelines import _nlp

PIPELINE = Pipeline(
    name="token_classification",
    help="token classification, e.g. named entities (NeMo TokenClassificationModel)",
    family="nlp",
    inputs=(InputSlot(name="model", model_classes=("TokenClassificationModel",), primary="nn"),),
    ensemble_name="riva_ner",
    components=(
        _nlp.tokenizer("token_classification_tokenizer"),
        _nlp.network("riva-{runtime}-riva_ner-nn-{pretrained_model_name}"),
        _nlp.python("label_tokens", "token_classification_label_tokens", "per-token label and score", handler="label_tokens",
                    binds=(Bind(role="labels", config_key="class_labels.class_labels_file"),)),
        _nlp.python("detokenizer", "token_classification_detokenizer",
                    "merge subword labels back onto the input words (first subword decides)", handler="ner_words"),
    ),
    ensemble=Ensemble(
        inputs=(_nlp.TEXT,),
        outputs=(Tensor(name="TOKENS", dtype="STRING", dims=(-1,)), Tensor(name="LABELS", dtype="STRING", dims=(-1,)),
                 Tensor(name="SCORES", dtype="FP32", dims=(-1,))),
        steps=(
            Step(component="tokenizer", inputs={"TEXT": "TEXT"}, outputs={**_nlp.ENCODED, **_nlp.WORDS, **_nlp.ROWS}),
            Step(component="nn", inputs=dict(_nlp.ENCODED), outputs={"logits": "logits"}),
            Step(component="label_tokens", inputs={"logits": "logits"},
                 outputs={"token_labels": "token_labels", "token_scores": "token_scores"}),
            Step(component="detokenizer",
                 inputs={"token_labels": "token_labels", "token_scores": "token_scores", **_nlp.WORDS, **_nlp.ROWS},
                 outputs={"TOKENS": "TOKENS", "LABELS": "LABELS", "SCORES": "SCORES"}),
        ),
    ),
)
