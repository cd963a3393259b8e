"""Start and stop a real Triton server for a model repository, on 127.0.0.1 only.

The server binary is ``tritonserver`` on PATH (a Triton container) or, failing that, the one bundled in the
``nvidia-pytriton`` wheel (``pip install 'servicemaker[serve]'``), which has the Python backend only — enough for
repositories deployed with ``--target onnxruntime-python``. The bundle is laid out in a scratch folder as Triton
expects (bin, backends with the Python-backend stub for this interpreter, caches); the Python-backend models run in
this interpreter's environment, which must satisfy the repository's requirements.txt (numpy<2 among them).

Before a server starts, every model's backend (its config.pbtxt's ``backend`` or ``platform``) is checked against
the server's backends folder: a repository deployed for a target the server cannot run is refused with the target
to redeploy with, instead of a server that fails while loading.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import IO

from packaging.requirements import InvalidRequirement, Requirement

from servicemaker.errors import NotFoundError, ServiceMakerError, UsageError


class ServerError(ServiceMakerError, RuntimeError):
    """The Triton server could not be found, started, or did not become ready."""

    exit_code = 9


class UnservableRepositoryError(UsageError):
    """The repository's models need a backend this tritonserver does not have (deployed for another target)."""


#: a config.pbtxt ``platform`` → the backend that runs it (``ensemble`` is built into Triton)
PLATFORM_BACKENDS = {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch",
                     "tensorflow_savedmodel": "tensorflow", "tensorflow_graphdef": "tensorflow", "ensemble": ""}
#: a model file Triton recognizes when a config names neither backend nor platform → its backend
FILE_BACKENDS = {"model.plan": "tensorrt", "model.onnx": "onnxruntime", "model.py": "python", "model.pt": "pytorch",
                 "model.savedmodel": "tensorflow", "model.graphdef": "tensorflow"}
#: svc-deploy's targets, best first, and the backend their network models need (docs/deploy.md)
TARGET_BACKENDS = {"tensorrt": "tensorrt", "onnxruntime": "onnxruntime", "onnxruntime-python": "python"}
#: where Triton looks for backends when not told (its ``--backend-directory`` default)
TRITON_BACKEND_DIR = Path("/opt/tritonserver/backends")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Binary:
    """How to run a tritonserver: the executable, extra arguments and environment."""

    path: Path
    args: list[str]
    env: dict[str, str]
    origin: str
    #: the folder of its backends (one folder each), or None where it cannot be told
    backends: Path | None = None

    def backend_names(self) -> set[str] | None:
        """The backends this tritonserver has, from its backends folder; None where unknown."""
        if self.backends is None or not self.backends.is_dir():
            return None
        return {p.name for p in self.backends.iterdir() if p.is_dir()}


def _bundle_root() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    return root if (root / "bin" / "tritonserver").exists() else None


def locate(explicit: str | None, workspace: Path) -> Binary:
    """The tritonserver to run: ``explicit``, else on PATH, else the nvidia-pytriton bundle laid out in
    ``workspace``."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    found = explicit or shutil.which("tritonserver")
    if found:
        if not Path(found).exists():
            raise NotFoundError(f"tritonserver {found} does not exist")
        # a Triton install keeps its backends beside bin/; else Triton's own default folder
        beside = Path(found).resolve().parent.parent / "backends"
        backends = beside if beside.is_dir() else TRITON_BACKEND_DIR if TRITON_BACKEND_DIR.is_dir() else None
        return Binary(Path(found), [], env, "PATH" if not explicit else "--tritonserver", backends)
    root = _bundle_root()
    if root is None:
        raise ServerError("no tritonserver found: none on PATH and nvidia-pytriton is not installed",
                          hint="pip install 'servicemaker[serve]' (bundles a CPU Triton with the Python backend), "
                               "or run inside a Triton container")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"nvidia-pytriton has no Python-backend stub for Python {version}",
                          hint="use Python 3.8-3.13, or a Triton container")
    for part in ("bin", "backends", "caches"):
        shutil.copytree(root / part, workspace / part, symlinks=True)
    shutil.copy2(stub, workspace / "backends" / "python" / "triton_python_backend_stub")
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(root.parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    return Binary(workspace / "bin" / "tritonserver",
                  [f"--backend-directory={workspace / 'backends'}", f"--cache-directory={workspace / 'caches'}"],
                  env, "nvidia-pytriton", workspace / "backends")


def unmet_requirements(repo: Path) -> list[str]:
    """Lines of the repository's requirements.txt this interpreter's environment does not satisfy."""
    req = repo / "requirements.txt"
    if not req.exists():
        return []
    unmet = []
    for line in req.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            unmet.append(f"{line} (unreadable)")
            continue
        try:
            have = importlib_metadata.version(requirement.name)
        except importlib_metadata.PackageNotFoundError:
            unmet.append(f"{line} (not installed)")
            continue
        if requirement.specifier and not requirement.specifier.contains(have, prereleases=True):
            unmet.append(f"{line} (have {have})")
    return unmet


def model_backends(repo: Path) -> dict[str, str]:
    """Model folder → the backend it needs ("" for an ensemble), from its config.pbtxt's ``backend`` or
    ``platform``, else from its model file as Triton would; unreadable configs are left to Triton to report."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    out: dict[str, str] = {}
    for cfg in sorted(repo.glob("*/config.pbtxt")):
        try:
            parsed = text_format.Parse(cfg.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
        except (text_format.ParseError, UnicodeDecodeError, OSError):
            continue
        backend = parsed.backend or PLATFORM_BACKENDS.get(parsed.platform, parsed.platform)
        if not backend and parsed.platform != "ensemble":
            names = {f.name for f in cfg.parent.glob("*/*")}
            backend = next((b for f, b in FILE_BACKENDS.items() if f in names), "")
        out[cfg.parent.name] = backend
    return out


def _deployed_targets(repo: Path) -> dict[str, str]:
    """Model → the svc-deploy target it was deployed with, from deploy_status.json (empty if unreadable)."""
    import json

    try:
        status = json.loads((repo / "deploy_status.json").read_text(encoding="utf-8"))
        models = status.get("models", {})
        return {name: str(m.get("target") or status.get("target") or "") for name, m in models.items()
                if isinstance(m, dict)}
    except (OSError, ValueError, AttributeError):
        return {}


def check_servable(repo: Path, binary: Binary) -> None:
    """Raise :class:`UnservableRepositoryError` naming the models whose backend ``binary`` lacks, the target they
    were deployed with, and the target to redeploy with. Says nothing where the backends cannot be told."""
    have = binary.backend_names()
    if have is None:
        return
    missing = {name: b for name, b in model_backends(repo).items() if b and b not in have}
    if not missing:
        return
    targets = _deployed_targets(repo)
    shown = [f"{name} (backend {b}" + (f", deployed with --target {targets[name]}" if targets.get(name) else "")
             + ")" for name, b in sorted(missing.items())]
    owned = ", ".join(sorted(have)) or "none"
    message = (f"this tritonserver ({binary.origin}) cannot serve {repo}: it has the {owned} backend(s) only, and "
               f"{len(missing)} model(s) need another: " + "; ".join(shown))
    # a redeploy swaps the network models' backend only; Python-backend models stay what they are
    redeployable = all(b in ("tensorrt", "onnxruntime") for b in missing.values())
    usable = [target for target, b in TARGET_BACKENDS.items() if b in have] if redeployable else []
    needed = sorted(set(missing.values()))
    if usable:
        hint = (f"redeploy for this server: svc-deploy RMIR... {repo} -f --target {usable[0]}; or serve it with "
                f"a Triton that has the {', '.join(needed)} backend(s) (--tritonserver PATH)")
    else:
        hint = f"serve it with a Triton that has the {', '.join(needed)} backend(s) (--tritonserver PATH)"
    raise UnservableRepositoryError(message, hint=hint)


class TritonServer:
    """A tritonserver process for ``repo`` on 127.0.0.1; stopped by PID. Use as a context manager."""

    def __init__(self, repo: str | os.PathLike, *, http_port: int | None = None, grpc_port: int | None = None,
                 metrics_port: int | None = None, binary: str | None = None, log: IO | None = None,
                 verbose: int = 0, extra_args: list[str] | None = None) -> None:
        self.repo = Path(repo).absolute()
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.binary_arg = binary
        self.log = log
        self.verbose = verbose
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen | None = None
        self.origin = ""
        self._workspace: Path | None = None
        self._binary: Binary | None = None
        self._log_path: Path | None = None
        self._log_file: IO | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def prepare(self) -> Binary:
        """Every check that needs no running server: a model repository, backends for all its models, the
        Python models' requirements; the tritonserver located (laid out in a scratch folder). Idempotent."""
        if self._binary is not None:
            return self._binary
        if not (self.repo / "deploy_status.json").exists() and not any(self.repo.glob("*/config.pbtxt")):
            raise NotFoundError(f"{self.repo} is not a model repository (no */config.pbtxt)",
                                hint="deploy one with svc-deploy")
        workspace = Path(tempfile.mkdtemp(prefix="svc-serve-"))
        try:
            binary = locate(self.binary_arg, workspace)
            check_servable(self.repo, binary)
            unmet = unmet_requirements(self.repo)
            if unmet:
                raise ServerError("this Python environment lacks what the repository's Python models import: "
                                  + ", ".join(unmet), hint=f"pip install -r {self.repo / 'requirements.txt'}")
        except BaseException:
            shutil.rmtree(workspace, ignore_errors=True)
            raise
        self._workspace, self._binary, self.origin = workspace, binary, binary.origin
        return binary

    def start(self) -> TritonServer:
        binary = self.prepare()
        args = [str(binary.path), f"--model-repository={self.repo}", *binary.args,
                "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
                f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
                f"--metrics-port={self.metrics_port}", "--allow-gpu-metrics=false", f"--log-verbose={self.verbose}",
                *self.extra_args]
        out: IO | int
        if self.log is not None:
            out = self.log
        else:
            self._log_path = self._workspace / "tritonserver.log"
            out = self._log_file = open(self._log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=binary.env,
                                        cwd=self._workspace, start_new_session=True)
        return self

    def log_tail(self, lines: int = 25) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        text = self._log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        noise = ("CudaDriverHelper", "unable to create stream", "GPU metrics", "cuda")
        return "\n".join([ln for ln in text if not any(n in ln for n in noise)][-lines:])

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 120.0) -> TritonServer:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise ServerError(f"tritonserver exited with code {self.process.returncode} while loading "
                                  f"{self.repo}" + (f":\n{tail}" if tail else ""),
                                  hint="the log above names the model that failed to load")
            if self.ready():
                return self
            time.sleep(0.25)
        tail = self.log_tail()
        self.stop()
        raise ServerError(f"tritonserver was not ready within {timeout:.0f} s" + (f":\n{tail}" if tail else ""))

    def stop(self, timeout: float = 20.0) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._workspace is not None:
            shutil.rmtree(self._workspace, ignore_errors=True)
            self._workspace = None
            self._binary = None

    def __enter__(self) -> TritonServer:
        return self.start().wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()
