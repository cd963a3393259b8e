"""The fused serving layout (``svc-deploy --serving=fused``) in a real Triton: one Python-backend model per pipeline,
under the ensemble's name and with its tensors, answering exactly as the ensemble layout does; concurrent requests
batched through every step at once, each answered as alone; a bad request failing alone; refusals where the layout
cannot run."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from servicemaker.client import connect, ensembles, infer
from servicemaker.cli.deploy import app as deploy_app
from servicemaker.deploy import DeployOptions, deploy
from servicemaker.keys import ArchiveArg
from servicemaker.serve import TritonServer

from conftest import NLP

TEXTS = ["John lives in London", "will it rain tomorrow in paris " * 12, "hello"]
QA = {"QUESTION": ["who lives in london", "what will rain", "who won"],
      "CONTEXT": ["john lives in london and works at acme", "it will rain tomorrow in paris " * 12, "hello world"]}
ENTRY = {"text_classification": "riva_text_classification_misc", "token_classification": "riva_ner",
         "intent_slot": "riva_intent_misc", "punctuation": "riva_punctuation", "qa": "riva_qa"}


def request_of(pipeline: str, i: int | None = None) -> dict[str, list[str]]:
    inputs = QA if pipeline == "qa" else {"TEXT": TEXTS}
    return {k: (v if i is None else [v[i]]) for k, v in inputs.items()}


@pytest.fixture(scope="module")
def servers(tiny_rmirs, tmp_path_factory):
    repos = {}
    for layout in ("ensemble", "fused"):
        repos[layout] = tmp_path_factory.mktemp(layout) / "repo"
        deploy(DeployOptions(rmirs=[ArchiveArg(p, None) for p in tiny_rmirs.values()], repo=repos[layout],
                             target="onnxruntime-python", serving=layout))
    with TritonServer(repos["ensemble"]) as ens, TritonServer(repos["fused"]) as fused:
        yield {"ensemble": ens, "fused": fused, "repos": repos}


@pytest.mark.parametrize("pipeline", NLP)
def test_fused_answers_exactly_as_the_ensemble(servers, pipeline):
    name = ENTRY[pipeline]
    answers = {layout: infer(connect(servers[layout].http_url), name, request_of(pipeline))
               for layout in ("ensemble", "fused")}
    assert answers["fused"].keys() == answers["ensemble"].keys()
    for tensor, value in answers["ensemble"].items():
        got = answers["fused"][tensor]
        assert got.dtype == value.dtype and got.shape == value.shape, tensor
        assert np.array_equal(got, value), tensor  # bit for bit: same handlers, same shapes


def test_repository_holds_one_model_per_pipeline(servers):
    repo = servers["repos"]["fused"]
    models = sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
    assert models == sorted(ENTRY.values())
    assert ensembles(repo).keys() == ensembles(servers["repos"]["ensemble"]).keys()
    config = text_format.Parse((repo / "riva_ner" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    steps = json.loads(config.parameters["chain"].string_value)
    assert [s["component"] for s in steps] == ["tokenizer", "nn", "label_tokens", "detokenizer"]
    for step in steps:
        folder = repo / "riva_ner" / "1" / step["folder"]
        assert folder.is_dir()
        for key, value in step["params"].items():
            if key in ("vocab", "labels", "model"):
                assert (folder / value).is_file(), (step["component"], value)
    status = json.loads((repo / "deploy_status.json").read_text())
    assert status["serving"] == "fused"
    assert status["models"]["riva_ner"]["cache"]["status"] in ("hit", "miss")
    assert "optimization" in status["models"]["riva_ner"]


def _stats(server, model: str) -> tuple[int, int]:
    c = connect(server.http_url)
    s = c.get_inference_statistics(model)["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


def test_concurrent_requests_batch_and_answer_as_alone(servers):
    server = servers["fused"]
    name = ENTRY["token_classification"]
    texts = [TEXTS[i % 3] + (" acme" * (i % 5)) for i in range(12)]
    alone = [infer(connect(server.http_url), name, {"TEXT": [t]}) for t in texts]
    before = _stats(server, name)
    barrier = threading.Barrier(len(texts))

    def send(text):
        c = connect(server.http_url)
        barrier.wait(timeout=30)
        return [infer(c, name, {"TEXT": [text]}) for _ in range(4)]

    with ThreadPoolExecutor(len(texts)) as pool:
        results = list(pool.map(send, texts))
    inferences, executions = (a - b for a, b in zip(_stats(server, name), before))
    assert inferences == 4 * len(texts) and executions < inferences  # batches of more than one request ran
    for got, want in zip(results, alone):
        for answer in got:
            assert [w for w in answer["TOKENS"][0] if w] == [w for w in want["TOKENS"][0] if w]
            assert [w for w in answer["LABELS"][0] if w] == [w for w in want["LABELS"][0] if w]
            n = len([w for w in want["TOKENS"][0] if w])
            np.testing.assert_allclose(answer["SCORES"][0, :n], want["SCORES"][0, :n], atol=1e-5)


def test_a_bad_request_in_a_burst_fails_alone(servers):
    server = servers["fused"]
    name = ENTRY["text_classification"]
    want = infer(connect(server.http_url), name, {"TEXT": ["hello"]})

    def send(i):
        c = httpclient.InferenceServerClient(server.http_url)
        text = b"\xff\xfe broken" if i % 4 == 1 else b"hello"
        tensor = httpclient.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text]], dtype=object))
        try:
            return c.infer(name, [tensor]).as_numpy("LABEL")[0, 0]
        except Exception as err:  # noqa: BLE001 - the error is the answer under test
            return err

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(16)))
    for i, answer in enumerate(answers):
        if i % 4 == 1:
            assert isinstance(answer, Exception) and "not valid UTF-8" in str(answer)
        else:
            assert answer == want["LABEL"][0, 0]
    assert server.ready()


@pytest.mark.parametrize("extra, message", [
    (["--target", "onnxruntime"], "target onnxruntime"),
    (["--serving", "pipelined"], "expected one of ensemble, fused"),
])
def test_fused_is_refused_where_it_cannot_run(runner, tiny_rmirs, tmp_path, extra, message):
    repo = tmp_path / "repo"
    args = [str(tiny_rmirs["text_classification"]), str(repo), "--target", "onnxruntime-python",
            "--serving", "fused"]
    result = runner.invoke(deploy_app, args + extra)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not repo.exists()


def test_streaming_pipelines_cannot_be_fused(runner, tmp_path):
    from servicemaker.build import BuildOptions, build
    from servicemaker.samples.models import tiny_asr_export

    rmir = tmp_path / "asr.rmir"
    build(BuildOptions(pipeline="speech_recognition", output=ArchiveArg(rmir, None),
                       inputs=[ArchiveArg(tiny_asr_export(tmp_path / "asr.riva"), None)]))
    result = runner.invoke(deploy_app, [str(rmir), str(tmp_path / "repo"), "--target", "onnxruntime-python",
                                        "--serving", "fused"])
    assert result.exit_code == 2 and "sequence batcher" in result.output and "--serving=ensemble" in result.output


def test_switching_to_fused_names_the_models_left_behind(tiny_rmirs, tmp_path):
    from servicemaker.build import SilentReporter

    class Warned(SilentReporter):
        def __init__(self):
            super().__init__()
            self.warned = []

        def warn(self, message):
            self.warned.append(message)

    repo = tmp_path / "repo"
    rmirs = [ArchiveArg(tiny_rmirs["text_classification"], None)]
    deploy(DeployOptions(rmirs=rmirs, repo=repo, target="onnxruntime-python"))
    rep = Warned()
    result = deploy(DeployOptions(rmirs=rmirs, repo=repo, target="onnxruntime-python", serving="fused", force=True),
                    rep)
    assert result.replaced == ["riva_text_classification_misc"]
    assert any("text_classification_tokenizer_misc" in w and "remove" in w for w in rep.warned)
    config = (repo / "riva_text_classification_misc" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "chain" in config
