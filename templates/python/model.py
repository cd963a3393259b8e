"""Triton Python-backend glue written by svc-deploy: requests → numpy → svc_handlers → responses.

The handler and its settings come from this model's config.pbtxt ``parameters``; the files it reads lie next to
this file, with ``svc_handlers.py`` (the pipeline family's handlers) and ``svc_common.py`` (the handler
protocol). Only the packages in the repository's requirements.txt are needed.

- Every request Triton hands over goes to the handler at once (``batch``), so handlers can run them together;
  an error fails only its own request.
- Models behind the sequence batcher (handlers with ``SEQUENCE = True``) get each request with its correlation
  id and START/END flags (``stream``).
- A ``network_models`` parameter (JSON: role → model name, outputs, batched) gives the handler a callable per
  Triton model it runs (business logic scripting), e.g. the acoustic model a streaming front end feeds
  (``handler.network``, the only one) or the two networks of speech synthesis (``handler.networks[role]``).
- Decoupled models (handlers with ``DECOUPLED = True``) answer each request with a stream of responses:
  ``stream_batch`` calls ``send(i, outputs or error, final)`` as results are ready; every request gets a final one.
  A ``CONCURRENT`` handler takes the requests and answers them from a thread of its own (``wait=False``), so
  ``execute`` returns and later requests join the ones still streaming.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import svc_common  # noqa: E402
import svc_handlers  # noqa: E402

CONTROLS = ("START", "END", "READY", "CORRID")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.handler = svc_handlers.create(params.pop("handler"), HERE, params)
        self.inputs = [t["name"] for t in config["input"]]
        self.optional = {t["name"] for t in config["input"] if t.get("optional")}
        self.outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]]
        if params.get("network_models"):
            specs = json.loads(params["network_models"])
            self.handler.networks = {role: _network(spec["model"], spec["outputs"], spec["batched"])
                                     for role, spec in specs.items()}
            if len(specs) == 1:
                self.handler.network = next(iter(self.handler.networks.values()))

    def execute(self, requests):
        if getattr(self.handler, "DECOUPLED", False):
            return self._stream(requests)
        arrays, results = [], {}
        for i, request in enumerate(requests):
            try:
                arrays.append((i, {name: _input(request, name) for name in self.inputs
                                   if name not in self.optional or pb_utils.get_input_tensor_by_name(request, name)
                                   is not None}))
            except Exception as err:  # noqa: BLE001 - a malformed request fails alone
                results[i] = svc_common.detached(err)
        try:
            if self.handler.SEQUENCE:
                events = [svc_common.StreamEvent(_corrid(requests[i]), _flag(requests[i], "START"),
                                                 _flag(requests[i], "END"), a) for i, a in arrays]
                answers = list(self.handler.stream(events))
            else:
                answers = list(self.handler.batch([a for _, a in arrays]))
            if len(answers) != len(arrays):
                raise RuntimeError(f"the handler answered {len(answers)} of {len(arrays)} requests")
        except Exception as err:  # noqa: BLE001 - a handler failing as a whole fails its requests, not the model
            answers = [err] * len(arrays)
        # an error's traceback would keep the failed call's arrays alive until every response is sent
        answers = [svc_common.detached(a) if isinstance(a, Exception) else a for a in answers]
        results.update({i: answer for (i, _), answer in zip(arrays, answers)})
        return [self._response(results[i]) for i in range(len(requests))]

    def _stream(self, requests):
        """A decoupled model: every request's responses go out through its sender as the handler makes them."""
        senders = [request.get_response_sender() for request in requests]
        arrays, done = [], set()
        for i, request in enumerate(requests):
            try:
                arrays.append((i, {name: _input(request, name) for name in self.inputs
                                   if pb_utils.get_input_tensor_by_name(request, name) is not None
                                   or name not in self.optional}))
            except Exception as err:  # noqa: BLE001 - a malformed request fails alone
                senders[i].send(_error(err), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                done.add(i)
        index = [i for i, _ in arrays]

        def send(k, result, final):
            i = index[k]
            if i in done:
                return
            flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final or isinstance(result, Exception) else 0
            response = self._response(svc_common.detached(result) if isinstance(result, Exception) else result)
            senders[i].send(response, flags=flags)
            if flags:
                done.add(i)

        # a CONCURRENT handler answers from its own thread (requests arriving meanwhile join it): execute returns
        concurrent = getattr(self.handler, "CONCURRENT", False)
        try:
            if concurrent:
                self.handler.stream_batch([a for _, a in arrays], send, wait=False)
            else:
                self.handler.stream_batch([a for _, a in arrays], send)
        except Exception as err:  # noqa: BLE001 - a handler failing as a whole fails its open requests
            for k in range(len(arrays)):
                send(k, err, True)
        if not concurrent:
            for k in range(len(arrays)):  # every request ends with a final response
                if index[k] not in done:
                    send(k, RuntimeError("the handler ended the stream without a final response"), True)
        return None

    def _response(self, result):
        if isinstance(result, Exception):
            return _error(result)
        name = ""
        try:
            tensors = []
            for name, dtype in self.outputs:
                tensors.append(pb_utils.Tensor(name, np.ascontiguousarray(result[name]).astype(dtype, copy=False)))
        except Exception as err:  # noqa: BLE001 - a bad answer fails its request alone
            return _error(RuntimeError(f"output {name}: {_describe(err)}"))
        return pb_utils.InferenceResponse(output_tensors=tensors)


def _describe(err):
    """A handler's ValueError is a message for the client (what is wrong, what to do); any other exception is a
    bug, named by its type. Never empty."""
    text = str(err).strip()
    if isinstance(err, ValueError) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else f"{type(err).__name__} (no message)"


def _error(err):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(_describe(err)))


def _input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"the request has no input {name}")
    return tensor.as_numpy()


def _flag(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return bool(tensor is not None and np.any(tensor.as_numpy()))


def _corrid(request):
    tensor = pb_utils.get_input_tensor_by_name(request, "CORRID")
    if tensor is not None:
        return int(np.asarray(tensor.as_numpy()).reshape(-1)[0])
    return int(request.correlation_id())


def _network(model_name, names, batched):
    """A callable running another model of this repository on a dict of arrays (business logic scripting)."""

    def run(feeds):
        request = pb_utils.InferenceRequest(
            model_name=model_name, requested_output_names=list(names),
            # a batched model's [batch] tensor travels as [batch, 1] (config reshape)
            inputs=[pb_utils.Tensor(k, np.ascontiguousarray(v.reshape(-1, 1) if batched and v.ndim == 1 else v))
                    for k, v in feeds.items()])
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{model_name}: {response.error().message()}")
        return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in names}

    return run
