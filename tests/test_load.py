"""Load: one real Triton serving the five NLP pipelines (``--target onnxruntime-python``, one repository) under 16
concurrent clients (8 over HTTP, 8 over gRPC) sending 10,000 requests. Valid requests (batches of 1-4 texts: short,
empty, non-ASCII, and long ones that span many windows) are mixed with invalid ones: texts over
``max_request_chars`` or over the network's window limit, non-UTF-8 bytes, wrong shapes and dtypes, missing, unknown
and extra inputs, unknown models, batches over the ensemble's max_batch_size, QA inputs of unequal batch sizes.

Asserted: every valid request is answered plausibly (the right batch size, one label per word, labels from the
label files, the same scores for the same text whatever its batch-mates); every invalid one gets an error whose
message names its problem (never a traceback or a bare "internal error"); no model is reloaded or restarted (every
model stays READY, the Python-backend stub processes keep their PIDs, the server log loads no model again); the RSS
of the server and its stubs grows at most 10 % from the end of a 1,000-request warm-up to the end.
The figures are printed (``pytest -s``)."""

from __future__ import annotations

import os
import random
import re
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from servicemaker.client import ensemble_signatures
from servicemaker.deploy import DeployOptions, deploy
from servicemaker.keys import ArchiveArg
from servicemaker.runtime.nlp import MAX_REQUEST_CHARS, read_labels
from servicemaker.samples.models import TINY_WORDS
from servicemaker.serve import TritonServer

pytestmark = pytest.mark.slow

REQUESTS = 10_000
WARMUP = 1_000
CLIENTS = 16                     # even threads HTTP, odd threads gRPC
INVALID_SHARE = 0.25
TIMEOUT_S = 120                  # per request; a hang fails the request instead of the run
RSS_GROWTH_LIMIT = 0.10
SEED = 2026

ENSEMBLES = {"text_classification": "riva_text_classification_misc", "token_classification": "riva_ner",
             "intent_slot": "riva_intent_misc", "punctuation": "riva_punctuation", "qa": "riva_qa"}
LABEL_FILES = {"text_classification": "text_classification_label_tokens*/1/labels.csv",
               "token_classification": "token_classification_label_tokens*/1/labels.csv",
               "intents": "intent_slot_label_tokens*/1/intent_labels.csv",
               "slots": "intent_slot_label_tokens*/1/slot_labels.csv",
               "punct": "*punctuation_label_tokens*/1/punct_labels.csv"}
# words beyond the tiny vocabulary: several WordPiece tokens, accents, CJK, an emoji ([UNK]), a no-break space
EXTRA_WORDS = ["Paris,", "London.", "John's", "café", "naïve", "東京", "🙂", "b-52", "xylo", "WEATHER?", "rain\u00a0now"]


class Case(NamedTuple):
    kind: str                    # "valid", or the invalid kind
    pipeline: str
    model: str
    inputs: tuple                # (name, array, Triton datatype) each
    texts: dict                  # valid cases: input name -> its texts
    expect: str = ""             # invalid cases: a regex the error message must match


class Outcome(NamedTuple):
    case: int
    protocol: str
    seconds: float
    problem: str                 # "" when the request was answered as expected
    message: str                 # the error message of an invalid request


# --- the requests --------------------------------------------------------------------------------------------------

def short_text(rng: random.Random) -> str:
    words = [rng.choice(TINY_WORDS) if rng.random() < 0.8 else rng.choice(EXTRA_WORDS)
             for _ in range(rng.randint(1, 12))]
    return rng.choice([" ", " ", "  ", "\t"]).join(words)


def long_text(rng: random.Random) -> str:
    """120-350 words: 5-20 windows of the tiny exports' 64 tokens."""
    return " ".join(rng.choice(TINY_WORDS) if rng.random() < 0.85 else rng.choice(EXTRA_WORDS)
                    for _ in range(rng.randint(120, 350)))


def strings(items: list[str | bytes]) -> np.ndarray:
    return np.array([[s if isinstance(s, bytes) else s.encode("utf-8")] for s in items], dtype=object)


class Plan:
    """Pools of texts (repeated, so answers to the same text can be compared) and the case builders."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.short = [short_text(rng) for _ in range(150)] + ["", "   ", "hello"]   # empty texts are valid
        self.long = [long_text(rng) for _ in range(12)]
        self.invalid = [getattr(self, name) for name in sorted(vars(Plan)) if name.startswith("bad_")]

    def batch(self, allow_long: bool = True) -> list[str]:
        out, longs = [], 0
        for _ in range(self.rng.randint(1, 4)):
            if allow_long and longs < 2 and self.rng.random() < 0.08:
                out.append(self.rng.choice(self.long))
                longs += 1
            else:
                out.append(self.rng.choice(self.short))
        return out

    def valid_texts(self, pipeline: str) -> dict[str, list[str]]:
        if pipeline == "qa":
            contexts = self.batch()
            questions = [self.rng.choice(self.short) for _ in contexts]
            return {"QUESTION": questions, "CONTEXT": contexts}
        return {"TEXT": self.batch()}

    def case(self) -> Case:
        pipeline = self.rng.choice(sorted(ENSEMBLES))
        if self.rng.random() < INVALID_SHARE:
            return self.rng.choice(self.invalid)(pipeline)
        texts = self.valid_texts(pipeline)
        return Case("valid", pipeline, ENSEMBLES[pipeline],
                    tuple((name, strings(items), "BYTES") for name, items in texts.items()), texts)

    # each bad_<kind>(pipeline) -> Case: an invalid request and the message it must get
    def _with(self, pipeline: str, kind: str, expect: str, change) -> Case:
        texts = self.valid_texts(pipeline)
        name = "CONTEXT" if pipeline == "qa" else "TEXT"
        items: list[Any] = list(texts[name])
        at = self.rng.randrange(len(items))
        items[at] = change(items[at])
        inputs = tuple((n, strings(items if n == name else t), "BYTES") for n, t in texts.items())
        return Case(kind, pipeline, ENSEMBLES[pipeline], inputs, {}, expect)

    def bad_huge_text(self, pipeline: str) -> Case:
        size = self.rng.choice([self.rng.randint(MAX_REQUEST_CHARS + 1, 4 * MAX_REQUEST_CHARS)] * 4
                               + [self.rng.randint(10 * MAX_REQUEST_CHARS, 200 * MAX_REQUEST_CHARS)])
        return self._with(pipeline, "text over max_request_chars",
                          rf"text \d of the request has {size} characters, more than the {MAX_REQUEST_CHARS} this "
                          r"model accepts.*max_request_chars", lambda _: ("acme " * size)[:size])

    def bad_too_many_windows(self, pipeline: str) -> Case:
        if pipeline == "text_classification":   # long_input=truncate: one window per text, never too many
            pipeline = "token_classification"
        # under max_request_chars, 4,900 tokens: over 64 windows of 64 tokens however far apart they start
        return self._with(pipeline, "text over the window limit",
                          r"the request needs \d+ windows of 64 tokens but the network takes at most 64.*max_batch_size",
                          lambda _: "a " * 4900)

    def bad_not_utf8(self, pipeline: str) -> Case:
        junk = self.rng.choice([b"\xff\xfe", b"caf\xe9", b"\xe2\x82", b"\xc3(", b"\xed\xa0\x80"])
        return self._with(pipeline, "non-UTF-8 bytes", r"text \d of the request is not valid UTF-8",
                          lambda text: text.encode("utf-8") + junk)

    def bad_shape_2x2(self, pipeline: str) -> Case:
        inputs = tuple((name, strings(["a", "b", "c", "d"]).reshape(2, 2), "BYTES") for name in self.names(pipeline))
        return Case("shape [2, 2]", pipeline, ENSEMBLES[pipeline], inputs, {},
                    r"unexpected shape for input '(TEXT|QUESTION|CONTEXT)' for model '\S+'\. Expected \[-1,1\], "
                    r"got \[2,2\]")

    def bad_no_batch_dim(self, pipeline: str) -> Case:
        n = self.rng.randint(1, 3)
        inputs = tuple((name, strings(["hello"] * n).reshape(n), "BYTES") for name in self.names(pipeline))
        return Case("no batch dimension", pipeline, ENSEMBLES[pipeline], inputs, {},
                    rf"unexpected shape for input '(TEXT|QUESTION|CONTEXT)' for model '\S+'\. Expected \[-1,1\], "
                    rf"got \[{n}\]")

    def bad_dtype(self, pipeline: str) -> Case:
        dtype, array = self.rng.choice([("INT32", np.array([[7], [8]], dtype=np.int32)),
                                        ("FP32", np.array([[0.5]], dtype=np.float32))])
        inputs = tuple((name, array, dtype) for name in self.names(pipeline))
        return Case("INT32 or FP32 for a text", pipeline, ENSEMBLES[pipeline], inputs, {},
                    rf"inference input '(TEXT|QUESTION|CONTEXT)' data-type is '{dtype}', but model '\S+' expects 'BYTES'")

    def bad_missing_input(self, pipeline: str) -> Case:
        keep = ("QUESTION",) if pipeline == "qa" else ()
        inputs = tuple((name, strings(["who"]), "BYTES") for name in keep)
        return Case("missing input", pipeline, ENSEMBLES[pipeline], inputs, {},
                    r"expected \d inputs but got \d inputs for model '\S+'.*missing required input\(s\) "
                    r"\['(TEXT|CONTEXT)'\]")

    def bad_unknown_input(self, pipeline: str) -> Case:
        names = ["QUESTION", "CONTEXTS"] if pipeline == "qa" else ["text"]
        inputs = tuple((name, strings(["hello"]), "BYTES") for name in names)
        return Case("unknown input name", pipeline, ENSEMBLES[pipeline], inputs, {},
                    r"unexpected inference input '(text|CONTEXTS)' for model '\S+'")

    def bad_extra_input(self, pipeline: str) -> Case:
        inputs = tuple((name, strings(["hello"]), "BYTES") for name in self.names(pipeline) + ("LANGUAGE",))
        return Case("extra input", pipeline, ENSEMBLES[pipeline], inputs, {},
                    r"expected \d inputs but got \d inputs for model '\S+'\. Got input\(s\) \[.*'LANGUAGE'")

    def bad_unknown_model(self, pipeline: str) -> Case:
        model = self.rng.choice(["riva_nmt", "riva_ner_v2", "RIVA_NER"])
        inputs = tuple((name, strings(["hello"]), "BYTES") for name in self.names(pipeline))
        return Case("unknown model", pipeline, model, inputs, {}, rf"unknown model: '{model}' is not found")

    def bad_batch_too_large(self, pipeline: str) -> Case:
        n = self.rng.randint(9, 12)
        inputs = tuple((name, strings(["hello"] * n), "BYTES") for name in self.names(pipeline))
        return Case("batch over max_batch_size", pipeline, ENSEMBLES[pipeline], inputs, {},
                    r"inference request batch-size must be <= 8 for '\S+'")

    def bad_qa_batch_mismatch(self, pipeline: str) -> Case:
        inputs = (("QUESTION", strings(["who", "what"]), "BYTES"), ("CONTEXT", strings(["acme"]), "BYTES"))
        return Case("QA batch sizes differ", "qa", ENSEMBLES["qa"], inputs, {},
                    r"input '(QUESTION|CONTEXT)' batch size does not match other inputs for 'riva_qa'")

    @staticmethod
    def names(pipeline: str) -> tuple[str, ...]:
        return ("QUESTION", "CONTEXT") if pipeline == "qa" else ("TEXT",)


# --- plausibility of answers ---------------------------------------------------------------------------------------

def rows(array: np.ndarray) -> list[list[str]]:
    return [[v.decode("utf-8") for v in row if v != b""] for row in array]


class Checker:
    """Plausibility of a valid answer; per text, the scores of its first answer, which every later answer to the
    same text must repeat (a request mixed up with another's would not)."""

    def __init__(self, labels: dict[str, list[str]]) -> None:
        self.labels = labels
        self.seen: dict[tuple, np.ndarray] = {}
        self.lock = threading.Lock()

    def same(self, key: tuple, values: np.ndarray) -> str:
        values = np.asarray(values, dtype=np.float32)
        with self.lock:
            first = self.seen.setdefault(key, values)
        if first.shape != values.shape or not np.allclose(first, values, atol=1e-3):
            return f"{key[0]}: {key[1:]!r:.60} answered {values} before {first}"
        return ""

    def __call__(self, case: Case, out: dict[str, np.ndarray]) -> str:
        n = len(next(iter(case.texts.values())))
        for name, array in out.items():
            if array.shape[0] != n:
                return f"{name} has {array.shape[0]} rows for a batch of {n}"
        return getattr(self, case.pipeline)(case, out, n)

    def text_classification(self, case: Case, out, n: int) -> str:
        labels = self.labels["text_classification"]
        for b, text in enumerate(case.texts["TEXT"]):
            logits = out["LOGITS"][b]
            if out["LOGITS"].shape[1] != len(labels) or not np.all(np.isfinite(logits)):
                return f"LOGITS {logits} for {len(labels)} labels"
            if out["LABEL"][b, 0].decode() != labels[int(np.argmax(logits))]:
                return f"LABEL {out['LABEL'][b, 0]!r} is not the argmax of {logits}"
            if not 0 < out["SCORE"][b, 0] <= 1:
                return f"SCORE {out['SCORE'][b, 0]}"
            problem = self.same(("text_classification", text), logits)
            if problem:
                return problem
        return ""

    def words_and_labels(self, pipeline: str, text: str, tokens: list[str], labels: list[str], known: list[str],
                         scores: np.ndarray) -> str:
        words = text.split()
        if tokens != words:
            return f"{pipeline} TOKENS {tokens[:5]}... for the words {words[:5]}..."
        if len(labels) != len(words) or not set(labels) <= set(known):
            return f"{pipeline}: {len(labels)} labels {sorted(set(labels))} for {len(words)} words"
        if not np.all((scores > 0) & (scores <= 1)):
            return f"{pipeline}: scores {scores} outside (0, 1]"
        return self.same((pipeline, text), scores)

    def token_classification(self, case: Case, out, n: int) -> str:
        tokens, labels = rows(out["TOKENS"]), rows(out["LABELS"])
        for b, text in enumerate(case.texts["TEXT"]):
            scores = out["SCORES"][b, :len(labels[b])]
            problem = self.words_and_labels("token_classification", text, tokens[b], labels[b],
                                            self.labels["token_classification"], scores)
            if problem:
                return problem
        return ""

    def intent_slot(self, case: Case, out, n: int) -> str:
        tokens, slots = rows(out["TOKENS"]), rows(out["SLOTS"])
        for b, text in enumerate(case.texts["TEXT"]):
            if out["INTENT"][b, 0].decode() not in self.labels["intents"]:
                return f"INTENT {out['INTENT'][b, 0]!r}"
            problem = self.words_and_labels("intent_slot", text, tokens[b], slots[b], self.labels["slots"],
                                            out["INTENT_SCORE"][b])
            if problem:
                return problem
        return ""

    def punctuation(self, case: Case, out, n: int) -> str:
        marks = {"" if p == "O" else p for p in self.labels["punct"]}
        for b, text in enumerate(case.texts["TEXT"]):
            words = text.split()
            result = out["PUNCTUATED_TEXT"][b, 0].decode("utf-8")
            pieces = result.split(" ") if words else ([] if result == "" else [result])
            if len(pieces) != len(words):
                return f"punctuation: {len(pieces)} words out for {len(words)} in: {result[:80]!r}"
            for word, piece in zip(words, pieces):
                if not any(piece.startswith(w) and piece[len(w):] in marks for w in (word, word[:1].upper() + word[1:])):
                    return f"punctuation: {piece!r} for the word {word!r}"
        return ""

    def qa(self, case: Case, out, n: int) -> str:
        for b, (question, context) in enumerate(zip(case.texts["QUESTION"], case.texts["CONTEXT"])):
            start, end = int(out["ANSWER_START"][b, 0]), int(out["ANSWER_END"][b, 0])
            answer, score = out["ANSWER"][b, 0].decode("utf-8"), float(out["SCORE"][b, 0])
            if not (0 <= start <= end <= len(context)) or answer != context[start:end] or not 0 <= score <= 1:
                return f"qa: answer {answer!r} at [{start}, {end}) score {score} in {context[:60]!r}"
            problem = self.same(("qa", question, context), np.array([score]))
            if problem:
                return problem
        return ""


# --- the server's processes ----------------------------------------------------------------------------------------

def stubs(server_pid: int) -> dict[int, str]:
    """PID -> model folder of every Python-backend stub process the server started."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == server_pid and argv[0].endswith(b"triton_python_backend_stub"):
            model = next((Path(a.decode()).parent.parent.name for a in argv[1:] if a.endswith(b"model.py")), "?")
            out[int(entry)] = model
    return out


def rss_mb(pids: list[int]) -> float:
    total_kb = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total_kb += int(line.split()[1])
    return total_kb / 1024


def loads_logged(server: TritonServer) -> int:
    return server.log_tail(lines=10**9).count("successfully loaded")


def log_errors(server: TritonServer) -> list[str]:
    """Error lines of the server log (a failing stub, a lost connection) and Python tracebacks."""
    return [line for line in server.log_tail(lines=10**9).splitlines()
            if re.match(r"E\d{4} ", line) or "Traceback" in line]


# --- the clients ---------------------------------------------------------------------------------------------------

def send(protocol: str, client: Any, case: Case, outputs: list[str]) -> dict[str, np.ndarray]:
    module = httpclient if protocol == "http" else grpcclient
    tensors = []
    for name, array, dtype in case.inputs:
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    if protocol == "http":
        result = client.infer(case.model, tensors)
    else:
        result = client.infer(case.model, tensors, client_timeout=TIMEOUT_S)
    return {name: result.as_numpy(name) for name in outputs}


def run_one(protocol: str, client: Any, index: int, case: Case, outputs: list[str], check: Checker) -> Outcome:
    start = time.perf_counter()
    problem = message = ""
    try:
        out = send(protocol, client, case, outputs)
    except InferenceServerException as err:
        message = err.message() or str(err)
        seconds = time.perf_counter() - start
        if case.kind == "valid":
            problem = f"valid request failed: {message}"
        elif "Traceback" in message or re.fullmatch(r"\W*(internal error)?\W*", message, re.IGNORECASE):
            problem = f"unclear error: {message!r}"
        elif not re.search(case.expect, message, re.DOTALL):
            problem = f"{case.kind}: the message does not name the problem: {message!r}"
        return Outcome(index, protocol, seconds, problem, message)
    except Exception as err:  # noqa: BLE001 - a transport failure (timeout, reset) is a failed request
        return Outcome(index, protocol, time.perf_counter() - start, f"{type(err).__name__}: {err}", "")
    seconds = time.perf_counter() - start
    if case.kind != "valid":
        problem = f"{case.kind}: accepted"
    else:
        try:
            problem = check(case, out)
        except Exception as err:  # noqa: BLE001 - an answer the checks cannot even read
            problem = f"unreadable answer: {type(err).__name__}: {err}"
    return Outcome(index, protocol, seconds, problem, message)


def load(server: TritonServer, cases: list[Case], outputs: dict[str, list[str]], check: Checker,
         at_warmup) -> tuple[list[Outcome], float]:
    """16 threads take the cases in order; after the first WARMUP they wait while ``at_warmup()`` runs."""
    results: list[Outcome | None] = [None] * len(cases)
    lock = threading.Lock()
    cursor = [0]
    phase_end = [WARMUP]
    barrier = threading.Barrier(CLIENTS + 1, timeout=TIMEOUT_S * 15)
    errors: list[BaseException] = []

    def take() -> int | None:
        with lock:
            if cursor[0] >= phase_end[0]:
                return None
            cursor[0] += 1
            return cursor[0] - 1

    def worker(k: int) -> None:
        protocol = "http" if k % 2 == 0 else "grpc"
        try:
            if protocol == "http":   # created in its own thread: the HTTP client's event loop is per thread
                client = httpclient.InferenceServerClient(server.http_url, connection_timeout=TIMEOUT_S,
                                                          network_timeout=TIMEOUT_S)
            else:
                client = grpcclient.InferenceServerClient(server.grpc_url)
            for _ in range(2):
                while (i := take()) is not None:
                    case = cases[i]
                    results[i] = run_one(protocol, client, i, case, outputs.get(case.model, []), check)
                barrier.wait()
                barrier.wait()
            client.close()
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    try:
        barrier.wait()                   # warm-up done, every client idle
        at_warmup()
        phase_end[0] = len(cases)
        barrier.wait()
        barrier.wait()                   # the rest done
        elapsed = time.perf_counter() - started
        barrier.wait()
    except threading.BrokenBarrierError:
        raise AssertionError(f"a client thread failed or timed out: {errors!r}") from None
    for t in threads:
        t.join(TIMEOUT_S)
    assert not errors, errors
    assert all(r is not None for r in results)
    return results, elapsed  # type: ignore[return-value]


# --- the test ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def repo(tiny_rmirs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("load") / "repo"
    deploy(DeployOptions(rmirs=[ArchiveArg(p, None) for p in tiny_rmirs.values()], repo=out,
                         target="onnxruntime-python"))
    return out


def template(message: str) -> str:
    """An error message with its numbers, model and input names left out: the distinct kinds of answers."""
    message = re.sub(r"^\[request id: [^\]]*\] ", "", message)
    message = re.sub(r"'(riva|RIVA)_\w+'", "'<model>'", message)
    message = re.sub(r"input '\w+'", "input '<name>'", message)
    message = re.sub(r"input\(s\) \[[^\]]*\]", "input(s) [...]", message)
    message = re.sub(r"byte 0x[0-9a-f]{2} at offset \d+ \([^)]*\)", "byte <byte> at offset N (<reason>)", message)
    return re.sub(r"(?<![\w-])\d+", "N", message)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def test_sixteen_clients_ten_thousand_requests(repo):
    labels = {key: read_labels(str(next(repo.glob(pattern)))) for key, pattern in LABEL_FILES.items()}
    outputs = {name: list(outs) for name, (_, outs) in ensemble_signatures(repo).items()}
    assert set(ENSEMBLES.values()) <= set(outputs)
    plan = Plan(random.Random(SEED))
    cases = [plan.case() for _ in range(REQUESTS)]
    check = Checker(labels)
    with TritonServer(repo) as server:
        pid = server.process.pid
        before = stubs(pid)
        assert len(before) == sum(1 for c in repo.glob("*/config.pbtxt") if 'backend: "python"' in c.read_text())
        loads = loads_logged(server)
        warm: dict[str, Any] = {}

        def at_warmup() -> None:
            warm["stubs"] = stubs(pid)
            warm["rss"] = rss_mb([pid, *warm["stubs"]])

        results, elapsed = load(server, cases, outputs, check, at_warmup)
        after = stubs(pid)
        rss_end = rss_mb([pid, *after])
        states = {m["name"]: m.get("state", "") for m in
                  httpclient.InferenceServerClient(server.http_url).get_model_repository_index()}
        reloads = loads_logged(server) - loads + len(set(before) - set(after))
        logged = log_errors(server)
        alive = server.process.poll() is None

    valid = [r for r in results if cases[r.case].kind == "valid"]
    invalid = [r for r in results if cases[r.case].kind != "valid"]
    failures = [r for r in results if r.problem]
    messages = sorted({template(r.message) for r in invalid if r.message})
    kinds = sorted({cases[r.case].kind for r in invalid})
    growth = (rss_end - warm["rss"]) / warm["rss"]
    latencies = [r.seconds for r in valid]
    long_texts = set(plan.long)
    windowed = sum(1 for r in valid if any(t in long_texts for ts in cases[r.case].texts.values() for t in ts))
    print(f"\nLoad: {REQUESTS} requests from {CLIENTS} clients (8 HTTP, 8 gRPC) to the five NLP pipelines in one "
          f"Triton ({len(before)} Python-backend stubs)")
    table = [("requests", f"{len(results)}"),
             ("valid / invalid", f"{len(valid)} / {len(invalid)} ({len(kinds)} invalid kinds)"),
             ("valid with a long text", f"{windowed} (5-20 windows a text)"),
             ("over HTTP / gRPC", f"{sum(r.protocol == 'http' for r in results)} / "
                                  f"{sum(r.protocol == 'grpc' for r in results)}"),
             ("failed valid requests", f"{sum(1 for r in valid if r.problem)}"),
             ("invalid ones answered badly", f"{sum(1 for r in invalid if r.problem)}"),
             ("distinct error messages", f"{len(messages)}"),
             ("requests/s", f"{len(results) / elapsed:.1f} ({elapsed:.1f} s)"),
             ("latency valid p50 / p95", f"{percentile(latencies, 50):.1f} / {percentile(latencies, 95):.1f} ms"),
             ("latency invalid p50 / p95", f"{percentile([r.seconds for r in invalid], 50):.1f} / "
                                           f"{percentile([r.seconds for r in invalid], 95):.1f} ms"),
             ("RSS after warm-up / end", f"{warm['rss']:.0f} / {rss_end:.0f} MB ({100 * growth:+.1f} %)"),
             ("reloads / restarted stubs", f"{reloads} / {len(set(before) - set(after))}"),
             ("models READY", f"{sum(s == 'READY' for s in states.values())} of {len(states)}"),
             ("server log errors", f"{len(logged)}")]
    for name, value in table:
        print(f"  {name:<28} {value}")
    print("Distinct error messages (numbers, model and input names left out):")
    for m in messages:
        print(f"  - {m[:200]}{'...' if len(m) > 200 else ''}")
    for r in failures[:20]:
        print(f"FAILED #{r.case} ({r.protocol}, {cases[r.case].kind}, {cases[r.case].model}): {r.problem[:300]}")

    assert alive, "tritonserver exited under load"
    assert not failures, f"{len(failures)} requests failed, e.g. {failures[0].problem[:500]}"
    assert len(valid) >= 0.6 * REQUESTS and windowed >= 0.05 * len(valid) and len(kinds) == len(plan.invalid)
    for kind in kinds:   # every error path was taken over both protocols
        assert {r.protocol for r in invalid if cases[r.case].kind == kind} == {"http", "grpc"}, kind
    assert states and all(s == "READY" for s in states.values()), states
    assert after == before == warm["stubs"], "a Python-backend stub was restarted"
    assert reloads == 0
    assert not logged, logged[:5]
    assert growth <= RSS_GROWTH_LIMIT, f"RSS grew {100 * growth:.1f} % after warm-up"
