"""qa: QUESTION + CONTEXT → ANSWER, SCORE, ANSWER_START, ANSWER_END (character offsets in CONTEXT)."""

from servicemaker.pipeline import Ensemble, InputSlot, Param, Pipeline, Step, Tensor

from servicemaker.pipelines import _nlp

PIPELINE = Pipeline(
    name="qa",
    help="extractive question answering (NeMo QAModel)",
    family="nlp",
    inputs=(InputSlot(name="model", model_classes=("QAModel",), primary="nn"),),
    ensemble_name="riva_qa",
    components=(
        _nlp.tokenizer("riva_qa_preprocessor", handler="tokenize_qa", extra=(
            Param(name="doc_stride", type="int", min=1, max=4096, default=128, from_config="dataset.doc_stride",
                  help="tokens between the starts of consecutive context windows (a context longer than one window)"),
            Param(name="max_query_length", type="int", min=1, max=4096, default=64,
                  from_config="dataset.max_query_length", help="question tokens kept"),
        )),
        _nlp.network("riva-{runtime}-riva_qa-nn-{pretrained_model_name}"),
        _nlp.python("qa_postprocessor", "riva_qa_postprocessor", "best span within the context, as text and offsets", handler="qa_span",
                    extra=(Param(name="max_answer_length", type="int", min=1, max=4096, default=30,
                                 from_config="dataset.max_answer_length", help="longest answer in tokens"),
                           Param(name="n_best_size", type="int", min=1, max=1000, default=20,
                                 from_config="dataset.n_best_size",
                                 help="start and end candidates per window, and answers ranked for SCORE"),
                           Param(name="version_2_with_negative", type="bool", default=False,
                                 from_config="dataset.version_2_with_negative",
                                 help="the model can answer 'no answer' (SQuAD 2.0): ANSWER is empty when the null "
                                      "score wins"),
                           Param(name="null_score_diff_threshold", type="float", min=-1e6, max=1e6, default=0.0,
                                 from_config="dataset.null_score_diff_threshold",
                                 help="no answer when the null score exceeds the best span's by more than this"))),
    ),
    ensemble=Ensemble(
        inputs=(Tensor(name="QUESTION", dtype="STRING", dims=(1,)), Tensor(name="CONTEXT", dtype="STRING", dims=(1,))),
        outputs=(Tensor(name="ANSWER", dtype="STRING", dims=(1,)), Tensor(name="SCORE", dtype="FP32", dims=(1,)),
                 Tensor(name="ANSWER_START", dtype="INT32", dims=(1,)), Tensor(name="ANSWER_END", dtype="INT32", dims=(1,))),
        steps=(
            Step(component="tokenizer", inputs={"QUESTION": "QUESTION", "CONTEXT": "CONTEXT"},
                 outputs={**_nlp.ENCODED, "token_offsets": "token_offsets", "max_context": "max_context",
                          "context": "context", **_nlp.ROWS}),
            Step(component="nn", inputs=dict(_nlp.ENCODED), outputs={"logits": "logits"}),
            Step(component="qa_postprocessor",
                 inputs={"logits": "logits", "token_offsets": "token_offsets", "max_context": "max_context",
                         "attention_mask": "attention_mask", "context": "context", **_nlp.ROWS},
                 outputs={"ANSWER": "ANSWER", "SCORE": "SCORE", "ANSWER_START": "ANSWER_START",
                          "ANSWER_END": "ANSWER_END"}),
        ),
    ),
)
