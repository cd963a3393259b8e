"""A deployed repository's Python-backend models run in this process, without Triton: the handlers of their model
folders (``svc_handlers.py``, created with their ``config.pbtxt`` parameters), a model's ``network_models`` wired to
the other models here. The tests compare Triton's answers with these; the benchmarks time Triton against them.

    repo = LocalRepository(path)
    outputs = repo.handler("tts_synthesizer-English-US").batch([inputs])

The model folders of one repository hold the same ``svc_*`` modules for one family; loading a second family's
repository in the same process needs another process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

VERSION = "1"


class LocalRepository:
    def __init__(self, repo: str | Path, intra_op_threads: int = 0) -> None:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2

        self.repo = Path(repo)
        self.threads = intra_op_threads
        self.configs = {}
        for cfg in sorted(self.repo.glob("*/config.pbtxt")):
            parsed = text_format.Parse(cfg.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
            self.configs[parsed.name] = parsed
        self._handlers: dict[str, Any] = {}

    def params(self, name: str) -> dict[str, str]:
        return {k: v.string_value for k, v in self.configs[name].parameters.items()}

    def steps(self, ensemble: str) -> list[tuple[str, dict[str, str], dict[str, str]]]:
        """(model, input map, output map) of each step of ``ensemble``."""
        return [(s.model_name, dict(s.input_map), dict(s.output_map))
                for s in self.configs[ensemble].ensemble_scheduling.step]

    def handler(self, name: str) -> Any:
        """The handler of Python-backend model ``name`` (made once), its networks wired to the local models."""
        if name not in self._handlers:
            folder = self.repo / name / VERSION
            if str(folder) not in sys.path:
                sys.path.insert(0, str(folder))
            import svc_handlers  # noqa: E402 - the repository's own handler module

            params = self.params(name)
            if self.threads and "model" in params:
                params.setdefault("intra_op_threads", str(self.threads))
            handler = svc_handlers.create(params.pop("handler"), str(folder), params)
            if params.get("network_models"):
                specs = json.loads(params["network_models"])
                handler.networks = {role: self._runner(spec["model"]) for role, spec in specs.items()}
                if len(specs) == 1:
                    handler.network = next(iter(handler.networks.values()))
            self._handlers[name] = handler
        return self._handlers[name]

    def _runner(self, name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        handler = self.handler(name)

        def run(feeds: dict[str, Any]) -> dict[str, Any]:
            result = handler.batch([feeds])[0]
            if isinstance(result, Exception):
                raise result
            return result

        return run

    def run(self, ensemble: str, requests: list[dict[str, Any]]) -> list[Any]:
        """The requests through ``ensemble``'s steps as Triton runs them (every step gets all of them at once); per
        request its outputs, or the exception of the step it failed at. A decoupled step's responses are gathered:
        its output is the list of (outputs, final) it sent."""
        tensors: list[Any] = [dict(r) for r in requests]
        alive = list(range(len(requests)))
        for model, inputs, outputs in self.steps(ensemble):
            handler = self.handler(model)
            feeds = [{k: tensors[i][v] for k, v in inputs.items() if v in tensors[i]} for i in alive]
            if getattr(handler, "DECOUPLED", False):
                sent: dict[int, list] = {k: [] for k in range(len(feeds))}
                handler.stream_batch(feeds, lambda k, result, final: sent[k].append((result, final)))
                answers = [next((r for r, _ in sent[k] if isinstance(r, Exception)), sent[k]) for k in sent]
            else:
                answers = handler.batch(feeds)
            still = []
            for i, answer in zip(alive, answers):
                if isinstance(answer, Exception):
                    tensors[i] = answer
                elif isinstance(answer, list):
                    tensors[i] = answer
                else:
                    tensors[i].update({outputs[k]: v for k, v in answer.items() if k in outputs})
                    still.append(i)
            alive = still
        return tensors
