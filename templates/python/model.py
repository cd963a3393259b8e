"""Triton Python-backend glue written by svc-deploy: requests → numpy → svc_handlers → responses.

The handler and its settings come from this model's config.pbtxt ``parameters``; the files it reads lie next to
this file. Only numpy, tokenizers and onnxruntime are needed (see requirements.txt at the repository root).
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import svc_handlers  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.handler = svc_handlers.create(params.pop("handler"), HERE, params)
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                arrays = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
                result = self.handler(arrays)
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(result[name]).astype(dtype, copy=False))
                           for name, dtype in self.outputs]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as err:  # one bad request must not take the model down
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"{type(err).__name__}: {err}")))
        return responses
