"""Pieces the five NLP pipelines share: tokenizer and network components, tensors."""

from __future__ import annotations

from servicemaker.pipeline import Bind, Component, Param, Tensor, network_params, serving_params, tokenizer_params

TEXT = Tensor(name="TEXT", dtype="STRING", dims=(1,))
ENCODED = {"input_ids": "input_ids", "token_type_ids": "token_type_ids", "attention_mask": "attention_mask"}
WORDS = {"word_ids": "word_ids", "words": "words"}


def tokenizer(model_name: str, *, extra: tuple[Param, ...] = (), handler: str = "tokenize") -> Component:
    return Component(
        name="tokenizer", kind="python", model_name=model_name, handler=handler,
        help="WordPiece tokenization of the request text (Python backend, `tokenizers`)",
        params=tokenizer_params() + extra,
        binds=(Bind(role="vocab", config_key="tokenizer.vocab_file"),),
    )


def network(model_name: str) -> Component:
    return Component(
        name="nn", kind="network", model_name=model_name, handler="onnx",
        help="the exported BERT-family network (TensorRT plan or ONNX Runtime)",
        params=network_params(),
        binds=(
            Bind(role="graph", pattern="*.onnx"),
            Bind(role="model_config", pattern="model_config.yaml"),
            Bind(role="lm_config", config_key="language_model.config_file"),
        ),
    )


def python(name: str, model_name: str, help: str, *, handler: str, binds: tuple[Bind, ...] = (),
           extra: tuple[Param, ...] = ()) -> Component:
    return Component(name=name, kind="python", model_name=model_name, help=help, params=serving_params() + extra,
                     binds=binds, handler=handler)
