"""A local Ray cluster for the Ray Serve tests: one head node on loopback, started by a driver
subprocess that keeps it alive (its exit takes the whole cluster down, leaving nothing behind)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from server_support import free_port

_DRIVER = """
import sys, ray
ray.init(num_cpus=int(sys.argv[1]), include_dashboard=False, _metrics_export_port=int(sys.argv[2]),
         log_to_driver=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes our stdin
ray.shutdown()
"""


class LocalRayCluster:
    def __init__(self, num_cpus: int = 2) -> None:
        self.metrics_port = free_port()
        self.serve_port = free_port()  # Serve's HTTP proxy: one port for the cluster's lifetime
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
               # Metrics reach the export port within a second, not ten.
               "RAY_metrics_report_interval_ms": "500"}
        self.log = tempfile.NamedTemporaryFile(prefix="ray-cluster-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, "-c", _DRIVER, str(num_cpus), str(self.metrics_port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     env=env, text=True)
        line = self.proc.stdout.readline().strip()
        if not line:
            raise RuntimeError("the Ray cluster did not start:\n" + pathlib.Path(self.log.name).read_text())
        self.address = line

    def metrics(self, prefix: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Samples of Ray's metrics export whose name starts with ``prefix``: (name, labels) -> value."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10.0).text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name.startswith(prefix):
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def replica_pids(self) -> list[int]:
        """PIDs of the live ``Model`` replicas (their process title names the actor)."""
        pids = []
        for proc in pathlib.Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::ServeReplica:mistralrs:Model"):
                pids.append(int(proc.name))
        return pids

    def wait_serving(self, app: str, deployment: str, replicas: int, timeout: float) -> None:
        """Until Serve reports ``app`` RUNNING with ``replicas`` of ``deployment`` RUNNING. The HTTP
        front answers ``/health`` as soon as the ingress is up, while replicas may still be loading
        their model; requests sent then all go to the replicas that are up."""
        script = (
            "import sys, time, ray\n"
            "from ray import serve\n"
            "ray.init(address=sys.argv[1], log_to_driver=False)\n"
            "deadline = time.monotonic() + float(sys.argv[5])\n"
            "while time.monotonic() < deadline:\n"
            "    a = serve.status().applications.get(sys.argv[2])\n"
            "    d = a.deployments.get(sys.argv[3]) if a else None\n"
            "    if a and a.status == 'RUNNING' and d and d.replica_states.get('RUNNING', 0) == int(sys.argv[4]):\n"
            "        sys.exit(0)\n"
            "    time.sleep(0.25)\n"
            "print(serve.status(), flush=True)\n"
            "sys.exit(1)\n")
        done = subprocess.run([sys.executable, "-c", script, self.address, app, deployment, str(replicas),
                               str(timeout)], capture_output=True, text=True, timeout=timeout + 60)
        if done.returncode != 0:
            raise RuntimeError(f"{app}: not {replicas} {deployment} replicas running within {timeout}s:\n"
                               f"{done.stdout}{done.stderr[-4000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)

    def wait_for(self, predicate, timeout: float, what: str) -> float:
        """Seconds until ``predicate()`` holds; AssertionError after ``timeout``."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if predicate():
                return time.monotonic() - start
            time.sleep(0.25)
        raise AssertionError(f"{what}: not within {timeout}s")
