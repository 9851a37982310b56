"""A ``python -m mistralrs serve`` subprocess on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """Starts the server with ``args`` and waits until ``/health`` answers."""

    def __init__(self, args: list[str], *, ready_timeout: float = 60.0, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A file, not a pipe: nobody reads the log while tests run, and a full pipe would block the server.
        self.log = tempfile.NamedTemporaryFile(prefix="mistralrs-serve-", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "mistralrs", "serve", *args, "--port", str(self.port), "--log-level", "warning"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("MISTRALRS_API_KEY", None)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not answer /health within {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return pathlib.Path(self.log.name).read_text(errors="replace")

    def metrics(self) -> dict[str, float]:
        """Each sample of ``/metrics`` by name and labels: ``name{k="v",...}`` (labels sorted)."""
        text = httpx.get(f"{self.url}/metrics", timeout=5.0).text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then the exit code (SIGKILL after ``timeout``); the log is gone afterwards."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
            os.unlink(self.log.name)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
