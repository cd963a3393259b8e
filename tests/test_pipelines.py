"""The pipeline registry drives these tests: every registered pipeline is exercised."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import servicemaker.pipelines as pkg
from servicemaker.errors import UsageError
from servicemaker.pipeline import check_overrides, parse_overrides
from servicemaker.pipelines import REGISTRY


def test_every_module_is_registered():
    modules = {m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")}
    assert modules == set(REGISTRY)
    for name in modules:
        assert importlib.import_module(f"servicemaker.pipelines.{name}").PIPELINE is REGISTRY[name]


@pytest.mark.parametrize("name", list(REGISTRY))
def test_pipeline_is_consistent(name):
    p = REGISTRY[name]
    assert p.name == name
    ensembles = [p.ensemble, *p.extra_ensembles.values()]
    for ensemble in ensembles:
        assert ensemble.problems({c.name for c in p.components}) == []
    # a component outside every ensemble's steps must be a network another model runs (a streaming front end, a
    # synthesizer)
    outside = {c.name for c in p.components} - {s.component for e in ensembles for s in e.steps}
    assert all(p.component(c).kind == "network" for c in outside)
    assert sum(c.kind == "network" for c in p.components) >= 1
    for c in p.components:
        assert {"max_batch_size", "instance_group_count"} <= {q.name for q in c.params}


def test_parse_overrides_forms():
    o, rest = parse_overrides(["a", "--nn.fuse=false", "b", "--tokenizer.max_seq_length", "64", "c"])
    assert o == {"nn.fuse": "false", "tokenizer.max_seq_length": "64"} and rest == ["a", "b", "c"]
    with pytest.raises(UsageError, match="--nn.fuse is given twice"):
        parse_overrides(["--nn.fuse=1", "--nn.fuse=0"])
    with pytest.raises(UsageError, match="--nn.fuse needs a value"):
        parse_overrides(["--nn.fuse"])
    with pytest.raises(UsageError, match="unknown option --bogus"):
        parse_overrides(["--bogus"])


def test_override_types():
    p = REGISTRY["text_classification"]
    got = check_overrides(p, {"nn.fuse": "false", "nn.max_batch_size": "16", "nn.accuracy_tolerance": "0.05",
                              "nn.precision": "int8", "tokenizer.lower_case": "yes"})
    assert got == {("nn", "fuse"): False, ("nn", "max_batch_size"): 16, ("nn", "accuracy_tolerance"): 0.05,
                   ("nn", "precision"): "int8", ("tokenizer", "lower_case"): True}


@pytest.mark.parametrize("key,value,message", [
    ("nn.max_batch_size", "abc", "--nn.max_batch_size=abc: expected an integer"),
    ("nn.max_batch_size", "1.5", "--nn.max_batch_size=1.5: expected an integer"),
    ("nn.max_batch_size", "0", "--nn.max_batch_size=0: must be at least 1"),
    ("nn.fuse", "maybe", "--nn.fuse=maybe: expected true or false"),
    ("nn.precision", "int4", "--nn.precision=int4: expected one of fp32, fp16, int8"),
    ("nn.accuracy_tolerance", "nan", "--nn.accuracy_tolerance=nan: expected a finite number"),
    ("nn.accuracy_tolerance", "2", "--nn.accuracy_tolerance=2.0: must be at most 1"),
])
def test_override_type_errors(key, value, message):
    with pytest.raises(UsageError) as err:
        check_overrides(REGISTRY["text_classification"], {key: value})
    assert str(err.value) == message


def test_unknown_override_lists_valid_names():
    with pytest.raises(UsageError) as err:
        check_overrides(REGISTRY["qa"], {"nn.nonsense": "1", "nn.fuse": "x"})
    assert str(err.value) == ("--nn.nonsense is not a parameter of pipeline qa; --nn.fuse=x: expected true or false")
    assert "--tokenizer.doc_stride" in err.value.hint and "--qa_postprocessor.max_answer_length" in err.value.hint
