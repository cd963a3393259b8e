"""punctuation: TEXT → PUNCTUATED_TEXT (punctuation and capitalization restored)."""

from servicemaker.pipeline import Bind, Ensemble, InputSlot, Pipeline, Step, Tensor

from servicemaker.pipelines import _nlp

PIPELINE = Pipeline(
    name="punctuation",
    help="punctuation and capitalization (NeMo PunctuationCapitalizationModel)",
    family="nlp",
    inputs=(InputSlot(name="model", model_classes=("PunctuationCapitalizationModel",), primary="nn"),),
    ensemble_name="riva_punctuation",
    components=(
        _nlp.tokenizer("riva_punctuation_tokenizer"),
        _nlp.network("riva-{runtime}-riva_punctuation-nn-{pretrained_model_name}"),
        _nlp.python("label_tokens", "riva_punctuation_label_tokens", "per-token punctuation and capitalization labels", handler="punct_labels",
                    binds=(Bind(role="punct_labels", config_key="class_labels.punct_labels_file"),
                           Bind(role="capit_labels", config_key="class_labels.capit_labels_file"))),
        _nlp.python("detokenizer", "riva_punctuation_detokenizer",
                    "apply the labels of each word's first subword and join the words", handler="punct_words"),
    ),
    ensemble=Ensemble(
        inputs=(_nlp.TEXT,),
        outputs=(Tensor(name="PUNCTUATED_TEXT", dtype="STRING", dims=(1,)),),
        steps=(
            Step(component="tokenizer", inputs={"TEXT": "TEXT"}, outputs={**_nlp.ENCODED, **_nlp.WORDS, **_nlp.ROWS}),
            Step(component="nn", inputs=dict(_nlp.ENCODED),
                 outputs={"punct_logits": "punct_logits", "capit_logits": "capit_logits"}),
            Step(component="label_tokens", inputs={"punct_logits": "punct_logits", "capit_logits": "capit_logits"},
                 outputs={"punct_labels": "punct_labels", "capit_labels": "capit_labels"}),
            Step(component="detokenizer",
                 inputs={"punct_labels": "punct_labels", "capit_labels": "capit_labels", **_nlp.WORDS, **_nlp.ROWS},
                 outputs={"PUNCTUATED_TEXT": "PUNCTUATED_TEXT"}),
        ),
    ),
)
