"""servicemaker: an open two-stage model packaging compiler for NVIDIA Triton Inference Server.

Stage one (``svc-build``) validates EFF model exports and bundles them with a pipeline spec into an RMIR
archive; stage two (``svc-deploy``) turns an RMIR into a Triton model repository.
"""

__version__ = "0.1.0"
