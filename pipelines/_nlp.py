"""The NLP family: pieces the five NLP pipelines share (tokenizer and network components, tensors) and the
family's deploy hooks (graph check, tokenized sample inputs, TensorRT profile)."""

from __future__ import annotations

from typing import Any

from servicemaker.errors import ValidationError
from servicemaker.family import Family, NetworkJob, SampleFeeds, refuse
from servicemaker.onnx_scan import GraphScan, check_fits
from servicemaker.pipeline import (Bind, Component, Param, Pipeline, Step, Tensor, network_params, serving_params,
                                   tokenizer_params)

TEXT = Tensor(name="TEXT", dtype="STRING", dims=(1,))
ENCODED = {"input_ids": "input_ids", "token_type_ids": "token_type_ids", "attention_mask": "attention_mask"}
WORDS = {"word_ids": "word_ids", "words": "words"}
#: which text of the request each network row (window) belongs to
ROWS = {"row_text": "row_text"}
#: rows the network and the decoders after it take at once by default: a long text's windows are rows of one batch
NETWORK_ROWS = 64

DOC_STRIDE = Param(name="doc_stride", type="int", min=1, max=8192, default=None,
                   help="tokens between the starts of consecutive windows over a text longer than max_seq_length "
                        "(default: half a window, (max_seq_length - 2) // 2)")
MAX_REQUEST_CHARS = Param(name="max_request_chars", type="int", min=1, max=10_000_000, default=10_000,
                          help="longest text a request may carry, in characters; a longer one gets an error")
LONG_INPUT = Param(name="long_input", type="choice", choices=("truncate", "mean"), default="truncate",
                   help="a text longer than max_seq_length: classify its first window (truncate) or the mean of "
                        "the logits of all its windows (mean)")


def tokenizer(model_name: str, *, extra: tuple[Param, ...] = (DOC_STRIDE,), handler: str = "tokenize") -> Component:
    return Component(
        name="tokenizer", kind="python", model_name=model_name, handler=handler,
        help="WordPiece tokenization of the request text into max_seq_length windows (Python backend, `tokenizers`)",
        params=tokenizer_params() + (MAX_REQUEST_CHARS,) + extra,
        binds=(Bind(role="vocab", config_key="tokenizer.vocab_file"),),
    )


def network(model_name: str) -> Component:
    return Component(
        name="nn", kind="network", model_name=model_name, handler="onnx",
        help="the exported BERT-family network (TensorRT plan or ONNX Runtime); a long text's windows are rows",
        params=network_params(max_batch_size=NETWORK_ROWS),
        binds=(
            Bind(role="graph", pattern="*.onnx"),
            Bind(role="model_config", pattern="model_config.yaml"),
            Bind(role="lm_config", config_key="language_model.config_file"),
        ),
    )


def python(name: str, model_name: str, help: str, *, handler: str, binds: tuple[Bind, ...] = (),
           extra: tuple[Param, ...] = ()) -> Component:
    return Component(name=name, kind="python", model_name=model_name, help=help,
                     params=serving_params(max_batch_size=NETWORK_ROWS) + extra, binds=binds, handler=handler)


class NlpFamily(Family):
    """BERT-family networks between a WordPiece tokenizer and label decoders."""

    name = "nlp"
    runtime = "nlp"
    requirements = {"onnx": ("numpy<2", "onnxruntime>=1.17"), "*": ("numpy<2", "tokenizers>=0.15")}

    def check_graph(self, job: NetworkJob, model: Any) -> Any:
        """The graph's inputs must be what the tokenizer gives, its outputs what the decoders read, and each labels
        file must list as many labels as its output has classes."""
        from servicemaker.deploy import graph as graphs
        from servicemaker.runtime import nlp as runtime

        sig = graphs.signature(model, job.where)
        steps = job.spec.ensemble.steps
        problems = _interface_problems(job.pipeline, steps, sig, job.where)
        nn_tensors = {tensor: out for out, tensor in _nn_step(steps).outputs.items()}
        for step in steps:
            if step.component == "nn":
                continue
            for key, role in _handler_class(job.pipeline, step.component).LABELS.items():
                path = job.files.get(step.component, {}).get(role)
                out = sig.output(nn_tensors.get(step.inputs.get(key, ""), ""))
                if path is None or out is None or not isinstance(out.shape[-1], int):
                    continue
                count = len(runtime.read_labels(str(path)))
                if count != out.shape[-1]:
                    source = job.spec.components[step.component].artifacts[role].source
                    problems.append(f"{source} lists {count} labels but {out.name} has {out.shape[-1]} classes")
        _refuse(job.where, job.spec.pipeline, problems)
        return sig

    def check_scanned_graph(self, pipeline: Pipeline, graph: GraphScan, component: str) -> None:
        """At svc-build, the inputs and outputs (the labels files are counted at svc-deploy)."""
        _refuse(graph.where, pipeline.name,
                _interface_problems(pipeline, pipeline.ensemble.steps, graph.signature(), graph.where))

    def sample_feeds(self, job: NetworkJob) -> SampleFeeds:
        """Calibration and gate sentences, tokenized by the pipeline's own tokenizer over the staged vocabulary."""
        from servicemaker.deploy import feeds
        from servicemaker.runtime import nlp as runtime

        handler = job.pipeline.component("tokenizer").handler
        assert handler is not None
        params = {k: str(v).lower() if isinstance(v, bool) else str(v)
                  for k, v in job.component_params("tokenizer").items() if v is not None}
        params.update({role: str(path.absolute()) for role, path in job.files.get("tokenizer", {}).items()})
        tokenizer = runtime.create(handler, "/", params)
        qa = handler == "tokenize_qa"
        if job.calibration_path is not None:
            examples = feeds.lines(job.calibration_path.read_text(encoding="utf-8", errors="replace"))
            source = f"nn.calibration_data ({len(examples)} examples)"
            if not examples:
                raise ValidationError(f"{job.where}: the calibration data file has no examples",
                                      hint="give --nn.calibration_data a text file with one example per line")
        else:
            examples = feeds.bundled("calibration")
            source = f"servicemaker's default English sentences ({len(examples)} examples)"
        gate = feeds.bundled("samples") if job.gate_path is None else _gate_examples(job, qa)
        return SampleFeeds(feeds.tokenized(examples, tokenizer, qa), feeds.tokenized(gate, tokenizer, qa), source)

    def gate(self, job: NetworkJob, reference: list[dict[str, Any]], optimized: list[dict[str, Any]],
             feeds: list[dict[str, Any]]) -> dict[str, Any] | None:
        """With labeled nn.gate_data: top-1 accuracy of the FP32 and of the optimized network on the examples' real
        labels, and how often the two agree (reported; ``nn.accuracy_tolerance`` still bounds 1 - cosine)."""
        import numpy as np

        labels = job.state.get("gate_labels")
        if not labels:
            return None
        truth = np.array(labels["ids"])
        fp32 = np.concatenate([r[labels["output"]] for r in reference]).argmax(-1)
        opt = np.concatenate([o[labels["output"]] for o in optimized]).argmax(-1)
        if len(fp32) != len(truth):
            return {"labels_note": f"{len(truth)} labeled examples gave {len(fp32)} rows (an example longer than "
                                   "one window): top-1 on the labels not scored"}
        return {"labeled_examples": int(len(truth)), "labels_top1_fp32": round(float(np.mean(fp32 == truth)), 6),
                "labels_top1": round(float(np.mean(opt == truth)), 6),
                "labels_agreement": round(float(np.mean(opt == fp32)), 6)}

    def model_params(self, jobs: dict[str, NetworkJob], component: str) -> dict[str, str]:
        """The tokenizer learns how many rows (windows) the models after it take; the intent decoder how to read
        long inputs."""
        job = jobs["nn"]
        if component == "tokenizer":
            rows = min(int(job.component_params(c.name)["max_batch_size"])
                       for c in job.pipeline.components if c.name != "tokenizer")
            return {"network_rows": str(rows)}
        if job.pipeline.component(component).handler == "intent_slots":
            return {"long_input": str(job.component_params("tokenizer").get("long_input", "truncate"))}
        return {}

    def engine_profile(self, job: NetworkJob) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Rows 1..max_batch_size (windows of the requests in a batch) × tokens 1..max_seq_length, tuned for half
        the requests a tokenizer batch holds (most texts are one window)."""
        from servicemaker.deploy import tensorrt

        assert job.signature is not None
        tokenizer = job.component_params("tokenizer")
        return tensorrt.profile_for([t.name for t in job.signature.inputs], int(job.params["max_batch_size"]),
                                    int(tokenizer["max_seq_length"]), (int(tokenizer["max_batch_size"]) + 1) // 2)


def _gate_examples(job: NetworkJob, qa: bool) -> list[str]:
    """nn.gate_data's examples; their labels (``label<TAB>text`` lines), checked against the sequence classifier's
    labels, go to ``job.state["gate_labels"]`` for :meth:`NlpFamily.gate`."""
    from servicemaker.deploy import feeds

    lines = feeds.lines(job.gate_path.read_text(encoding="utf-8", errors="replace"))
    if not lines:
        raise ValidationError(f"{job.where}: the gate data file (nn.gate_data) has no examples",
                              hint="give --nn.gate_data a text file with one example per line")
    if qa or not any("\t" in line for line in lines):
        return lines  # QA lines are question<TAB>context
    pairs = [line.split("\t", 1) for line in lines]
    bad = next((i for i, p in enumerate(pairs, 1) if len(p) != 2 or not p[0].strip() or not p[1].strip()), None)
    if bad is not None:
        raise ValidationError(f"{job.where}: line {bad} of nn.gate_data has no 'label<TAB>text' while other lines do",
                              hint="label every line of the gate data, or none")
    output, names = _sequence_labels(job)
    if output is None:
        raise ValidationError(f"{job.where}: nn.gate_data has labels, but pipeline {job.pipeline.name} has no "
                              "sequence classifier to score them", hint="give the gate data without labels")
    ids = []
    for i, (label, _) in enumerate(pairs, 1):
        if label.strip() not in names:
            raise ValidationError(f"{job.where}: line {i} of nn.gate_data has label '{label.strip()}', which the "
                                  f"model does not know (its labels: {', '.join(names)})",
                                  hint="use the model's labels (its labels file), or drop the labels")
        ids.append(names.index(label.strip()))
    job.state["gate_labels"] = {"output": output, "ids": ids}
    return [text.strip() for _, text in pairs]


def _sequence_labels(job: NetworkJob) -> tuple[str | None, list[str]]:
    """The network output a sequence-level decoder (a class per text) reads, and its label names (the labels file,
    else the class indices); (None, []) when the pipeline has none."""
    from servicemaker.runtime import nlp as runtime

    steps = job.spec.ensemble.steps
    nn_tensors = {tensor: out for out, tensor in _nn_step(steps).outputs.items()}
    for step in steps:
        if step.component == "nn":
            continue
        handler = _handler_class(job.pipeline, step.component)
        decls = _decls(handler.INPUTS)
        for key, role in handler.LABELS.items():
            if decls[key][1] == (-1,) and step.inputs.get(key) in nn_tensors:
                path = job.files.get(step.component, {}).get(role)
                assert job.signature is not None
                out = nn_tensors[step.inputs[key]]
                count = job.signature.output(out).shape[-1]
                names = runtime.read_labels(str(path)) if path is not None else [str(i) for i in range(count)]
                return out, names
    return None, []


def _nn_step(steps: tuple[Step, ...]) -> Step:
    return next(s for s in steps if s.component == "nn")


def _interface_problems(pipeline: Pipeline, steps: tuple[Step, ...], sig: Any, where: str) -> list[str]:
    """Why the graph's signature does not fit between the tokenizer and the decoders: its inputs must be tensors
    the tokenizer gives (input_ids among them), its outputs those the decoders read, with their types and ranks."""
    nn_step = _nn_step(steps)
    producer = next(s for s in steps if set(nn_step.inputs.values()) & set(s.outputs.values()))
    feeds = {k: v for k, v in _decls(_handler_class(pipeline, producer.component).OUTPUTS).items()
             if k in producer.outputs}
    needs: dict[str, tuple[str, tuple[int, ...]]] = {}
    for out_name, tensor in nn_step.outputs.items():
        for step in steps:
            if step.component != "nn":
                consumer = _decls(_handler_class(pipeline, step.component).INPUTS)
                needs.update({out_name: consumer[key] for key, src in step.inputs.items() if src == tensor})
    problems = check_fits(sig, feeds, needs, where)
    if "input_ids" not in {t.name for t in sig.inputs}:
        problems.append("graph has no input_ids input")
    return problems


def _refuse(where: str, pipeline: str, problems: list[str]) -> None:
    refuse(where, pipeline, problems, "export the model with the inputs/outputs docs/deploy.md lists")


def _handler_class(pipeline: Pipeline, component: str) -> Any:
    from servicemaker.runtime import nlp as runtime

    name = pipeline.component(component).handler
    assert name is not None
    return runtime.HANDLERS[name]


def _decls(decls: tuple[tuple[str, str, tuple[int, ...]], ...]) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {name: (dtype, tuple(dims)) for name, dtype, dims in decls}


FAMILY = NlpFamily()
