"""A real, local S3 endpoint for tests and benchmarks: moto's server mode, on 127.0.0.1, in a subprocess.

    with s3_server(buckets=("cache",)) as endpoint:
        ...  # AWS_ENDPOINT_URL=endpoint and test credentials are set in os.environ for the block

The server listens on loopback only, on a free port; readiness is polled with a bounded wait; it is stopped by its
PID (SIGTERM, then SIGKILL after a bounded wait) and the environment is restored, whatever the block raised.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Iterator

from servicemaker.serve import free_port  # noqa: F401 - the tests import it from here too

#: the AWS variables the block sets (and restores afterwards); others that could point elsewhere are removed
AWS_SET = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
AWS_CLEARED = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SHARED_CREDENTIALS_FILE",
               "AWS_CONFIG_FILE", "AWS_REGION")
READY_SECONDS = 60.0
STOP_SECONDS = 10.0


def _wait_ready(proc: subprocess.Popen, url: str, log_path: str) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path, encoding="utf-8", errors="replace") as log:
                raise RuntimeError(f"moto server exited with {proc.returncode}: {log.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/moto-api/", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"moto server on {url} was not ready within {READY_SECONDS:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_SECONDS)


def make_buckets(endpoint: str, buckets: tuple[str, ...]) -> None:
    """Create ``buckets`` on the server (boto3 comes with moto)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    for name in buckets:
        client.create_bucket(Bucket=name)


@contextmanager
def s3_server(buckets: tuple[str, ...] = (), set_env: bool = True) -> Iterator[str]:
    """Start moto's S3 server on 127.0.0.1; yield its endpoint URL. With ``set_env`` the standard AWS variables
    point at it (test credentials, region us-east-1) for the block."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)
    saved = {k: os.environ.get(k) for k in AWS_SET + AWS_CLEARED}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_ready(proc, endpoint, log.name)
        if buckets:
            make_buckets(endpoint, buckets)
        if set_env:
            for k in AWS_CLEARED:
                os.environ.pop(k, None)
            os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
                              AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        try:
            _stop(proc)
        finally:
            log.close()
            os.unlink(log.name)
