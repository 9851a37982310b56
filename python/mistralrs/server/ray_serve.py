"""Replicas of a model on Ray Serve behind one OpenAI-compatible endpoint (``pip install 'mistralrs[ray]'``).

Two deployments make the application:

- ``Model``: each replica holds one ``Runner``, built from the same flags as ``python -m mistralrs
  serve``; it answers the runner's calls (generation, streamed or not, tokenizing, stats), reports its
  load to the request router and its engine's gauges and counters to Ray's metrics.
- ``OpenAIIngress``: the HTTP front. Its app is ``create_app`` itself, over a ``RemoteRunner`` that
  sends each call to a ``Model`` replica through a deployment handle. So the routes, validation, error
  shapes and streaming are the single-process server's, one code path for both.

The handle routes each generation with ``PrefixAffinityRouter`` (``mistralrs.server.ray_router``): a
request goes to the replica that already holds the longest prefix of its prompt in its prefix cache,
unless that replica is much busier than the least busy one.

Entry points: ``python -m mistralrs serve --ray --replicas 2 ...`` (``main``), and ``build`` for
``serve run mistralrs.server.ray_serve:build gguf=model.gguf replicas=2`` or a Serve config file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any, Optional

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from mistralrs import ChatCompletionRequest, Runner
from mistralrs.server.app import create_app
from mistralrs.server.cli import app_options, parser, runner_options

log = logging.getLogger("mistralrs.server")

# Engine stats exported through Ray's metrics (as ray_mistralrs_*): levels as gauges ...
_GAUGES = ("seqs_running", "seqs_waiting", "kv_blocks_used", "kv_blocks_total", "kv_blocks_cached",
           "kv_blocks_resident")
# ... and counts since the replica started as counters.
_COUNTERS = ("requests_cancelled", "preemptions", "prefix_cache_hit_tokens")
# The application's name in Serve (``serve status``, ``serve.get_deployment_handle(..., app_name=)``).
APP_NAME = "mistralrs"
# How often a replica copies its engine's stats into Ray's metrics (and its autoscaling stats to Serve).
_METRICS_PERIOD_S = 1.0
# Autoscaling decides on the mean load over this window.
_LOOK_BACK_S = 5.0
_QUEUE_METRIC = "engine_queue"


def argv_of(options: dict[str, Any]) -> list[str]:
    """The command-line flags of builder ``options`` (``{"gguf": "m.gguf", "replicas": 2,
    "no_kv_cache": True}``), so that ``serve run`` arguments, a Serve config file's ``args`` and the
    command line are checked by one parser. A list value repeats the flag's values."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False or value == "false":
            continue
        if value is True or value == "true":
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def _parse(argv: list[str]) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    p = parser("mistralrs serve --ray")
    return p.parse_args(argv), p


class Model:
    """One replica: a ``Runner`` and the calls ``RemoteRunner`` forwards to it."""

    async def __init__(self, argv: list[str]) -> None:
        args, p = _parse(argv)
        # The engine's thread pool: the CPUs Ray reserved for this replica, not every core.
        os.environ.setdefault("RAYON_NUM_THREADS", str(max(1, int(args.replica_cpus))))
        self.runner = Runner(**runner_options(args, p))
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.requests = 0
        self._metrics = _EngineMetrics(self.replica)
        self._metrics_task = asyncio.create_task(self._export_metrics())

    async def generate(self, request: Any) -> Any:
        """A whole response (``stream`` is false)."""
        self.requests += 1
        self._metrics.requests.inc()
        return await self._send(request)

    async def stream(self, request: Any) -> AsyncIterator[Any]:
        """None once the engine has taken the request (a bad one raises instead, before anything is
        yielded, so the client gets a 400 as from one process), then the chunks of the response.
        Closing the generator (the ingress's client left) cancels the request in the engine."""
        self.requests += 1
        self._metrics.requests.inc()
        chunks = await self._send(request)
        yield None
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    def _send(self, request: Any) -> Any:
        if isinstance(request, ChatCompletionRequest):
            return self.runner.send_chat_completion_request_async(request)
        return self.runner.send_completion_request_async(request)

    def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.runner.tokenize(text, add_special_tokens)

    def detokenize(self, ids: list[int]) -> str:
        return self.runner.detokenize(ids)

    def apply_chat_template(self, messages: list[Any], **kwargs: Any) -> str:
        return self.runner.apply_chat_template(messages, **kwargs)

    def stats(self) -> dict[str, Any]:
        return {**self.runner.stats(), "requests": self.requests, "replica": self.replica}

    def check_health(self) -> None:
        """Ray's health check: the runner answers (a closed or failed engine raises)."""
        self.runner.stats()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """The engine's queue depth, for ``scale_by_engine_queue``."""
        s = self.runner.stats()
        return {_QUEUE_METRIC: float(s["seqs_running"] + s["seqs_waiting"])}

    def record_routing_stats(self) -> dict[str, Any]:
        """What this replica tells the request router (every ``request_routing_stats_period_s``)."""
        s = self.runner.stats()
        return {"seqs_running": s["seqs_running"], "seqs_waiting": s["seqs_waiting"],
                "kv_blocks_cached": s["kv_blocks_cached"], "kv_blocks_total": s["kv_blocks_total"]}

    async def _export_metrics(self) -> None:
        while True:
            try:
                self._metrics.update(self.runner.stats())
            except Exception:  # a closing runner: the health check reports it
                pass
            await asyncio.sleep(_METRICS_PERIOD_S)

    def __del__(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.close()


class _EngineMetrics:
    """The engine's stats as Ray metrics, tagged with the replica: one Prometheus scrape of the
    cluster's metrics endpoints covers every replica."""

    def __init__(self, replica: str) -> None:
        from ray.util import metrics

        tags = {"replica": replica}
        self.gauges = {k: metrics.Gauge(f"mistralrs_{k}", f"runner.stats()['{k}']", tag_keys=("replica",))
                       for k in _GAUGES}
        self.counters = {k: metrics.Counter(f"mistralrs_{k}", f"runner.stats()['{k}']", tag_keys=("replica",))
                         for k in _COUNTERS}
        self.requests = metrics.Counter("mistralrs_replica_requests", "Generation requests this replica took",
                                        tag_keys=("replica",))
        for m in (*self.gauges.values(), *self.counters.values(), self.requests):
            m.set_default_tags(tags)
        self._seen = dict.fromkeys(_COUNTERS, 0)

    def update(self, stats: dict[str, Any]) -> None:
        for k, g in self.gauges.items():
            g.set(stats.get(k, 0))
        for k, c in self.counters.items():
            delta = stats.get(k, 0) - self._seen[k]
            if delta > 0:
                c.inc(delta)
                self._seen[k] = stats[k]


class ReplicaFailed(RuntimeError):
    """The replica serving a request died (or was unreachable) before answering it."""


def _unwrap(e: BaseException) -> BaseException:
    """The exception to raise for ``e`` from a replica call: the replica's own (a ``ValueError`` for a
    bad field keeps its ``param`` and ``code``), or ``ReplicaFailed`` when Ray lost the replica."""
    if isinstance(e, ray.exceptions.RayTaskError):
        cause = e.cause
        return cause if isinstance(cause, BaseException) else RuntimeError(str(e))
    return ReplicaFailed(f"the replica serving this request failed: {type(e).__name__}: {e}")


def _lost(e: BaseException) -> bool:
    """Ray lost the replica (rather than the replica raising): the request can go to another."""
    return isinstance(e, ray.exceptions.RayError) and not isinstance(e, ray.exceptions.RayTaskError)


class _RemoteStream:
    """The async iterator of a streamed response from a replica, as the runner's own streams behave:
    ``open`` returns once a replica's engine has taken the request (or raises its error), ``aclose``
    cancels it there. A replica lost before the first chunk is replaced once by another; after it,
    the stream ends with ``ReplicaFailed`` (an error event for the client)."""

    def __init__(self, remote: RemoteRunner, request: Any) -> None:
        self._remote = remote
        self._request = request
        self._gen: Any = None
        self._started = False
        self._retried = False

    async def open(self) -> _RemoteStream:
        self._gen = self._remote._streaming.stream.remote(self._request)
        try:
            await self._gen.__anext__()  # None: accepted
        except StopAsyncIteration:
            raise ReplicaFailed("the replica ended the stream before accepting the request") from None
        except asyncio.CancelledError:
            self._gen.cancel()
            raise
        except Exception as e:
            if _lost(e) and not self._retried:
                self._retried = True
                log.warning("replica lost before it took the request, sending it to another: %s", e)
                return await self.open()
            raise _unwrap(e) from None
        return self

    def __aiter__(self) -> _RemoteStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            try:
                chunk = await self._gen.__anext__()
            except StopAsyncIteration:
                raise
            except asyncio.CancelledError:
                self._gen.cancel()
                raise
            except Exception as e:
                if _lost(e) and not self._started and not self._retried:
                    log.warning("replica lost before the first chunk, sending the request to another: %s", e)
                    self._retried = True
                    await self.open()
                    continue
                raise _unwrap(e) from None
            self._started = True
            return chunk

    async def aclose(self) -> None:
        if self._gen is not None:
            self._gen.cancel()


class RemoteRunner:
    """What ``create_app`` needs of a ``Runner``, each call served by a ``Model`` replica. A
    whole response whose replica is lost is sent again, once, to another replica."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle
        self._streaming = handle.options(stream=True)

    async def _generate(self, request: Any) -> Any:
        if request.stream:
            return await _RemoteStream(self, request).open()
        for attempt in (0, 1):
            response = self._handle.generate.remote(request)
            try:
                return await response
            except asyncio.CancelledError:
                response.cancel()  # the client left: drop the request in the replica's engine
                raise
            except Exception as e:
                if attempt == 0 and _lost(e):
                    log.warning("replica lost, retrying the request on another: %s", e)
                    continue
                raise _unwrap(e) from None
        raise AssertionError("unreachable")

    send_chat_completion_request_async = _generate
    send_completion_request_async = _generate

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        # Called from the app's thread pool, never on its event loop.
        try:
            return getattr(self._handle, method).remote(*args, **kwargs).result()
        except Exception as e:
            raise _unwrap(e) from None

    def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        return self._call("tokenize", text, add_special_tokens)

    def detokenize(self, ids: list[int]) -> str:
        return self._call("detokenize", ids)

    def apply_chat_template(self, messages: list[Any], **kwargs: Any) -> str:
        return self._call("apply_chat_template", messages, **kwargs)

    def stats(self) -> dict[str, Any]:
        # The ingress's /metrics keeps its HTTP metrics; each replica's engine metrics go through
        # Ray's metrics pipeline (tagged by replica), where one scrape sees them all.
        return {}


class OpenAIIngress:
    """The HTTP front: ``create_app`` over a ``RemoteRunner``."""

    def __init__(self, model: DeploymentHandle, argv: list[str]) -> None:
        self._model = model
        self._argv = argv

    def __serve_build_asgi_app__(self) -> Any:
        args, _ = _parse(self._argv)
        return create_app(RemoteRunner(self._model), **app_options(args))


def scale_by_engine_queue(ctx: Any) -> tuple[int, dict[str, Any]]:
    """Serve's autoscaling policy for ``Model``: enough replicas that each has
    ``target_ongoing_requests`` sequences, counted by the engines themselves (running and waiting,
    over the look-back window, from ``record_autoscaling_stats``) or, when more, the requests the
    handles have in flight (some may still wait for a replica). Serve clamps the answer to the
    min / max replicas and applies the up / down delays."""
    engine = sum((ctx.aggregated_metrics or {}).get(_QUEUE_METRIC, {}).values())
    load = max(engine, ctx.total_num_requests)
    return math.ceil(load / ctx.config.target_ongoing_requests), {"load": load}


def _autoscaling(args: argparse.Namespace) -> Optional[Any]:
    from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

    lo = args.min_replicas if args.min_replicas is not None else args.replicas
    hi = args.max_replicas if args.max_replicas is not None else args.replicas
    if lo < 0 or hi < max(lo, 1):
        raise ValueError(f"replicas: need 0 <= min ({lo}) <= max ({hi}) and max >= 1")
    if lo == hi:
        return None
    return AutoscalingConfig(
        min_replicas=lo,
        initial_replicas=max(lo, 1),
        max_replicas=hi,
        target_ongoing_requests=args.target_ongoing_requests or args.max_seqs,
        upscale_delay_s=args.upscale_delay_s,
        downscale_delay_s=args.downscale_delay_s,
        look_back_period_s=_LOOK_BACK_S,
        metrics_interval_s=_METRICS_PERIOD_S,
        policy=AutoscalingPolicy(policy_function=scale_by_engine_queue),
    )


def application(args: argparse.Namespace, argv: list[str], p: argparse.ArgumentParser) -> serve.Application:
    """The Serve application the flags describe (``argv``: the same flags, for the replicas). Flags
    that name no model fail here, through ``p.error``, not later in every replica."""
    from mistralrs.server.ray_router import PrefixAffinityRouter

    runner_options(args, p)
    autoscaling = _autoscaling(args)
    model_options: dict[str, Any] = {
        "name": "Model",
        "ray_actor_options": {"num_cpus": args.replica_cpus, "num_gpus": args.replica_gpus},
        # A replica takes as many requests as it batches, and queues some more in its engine.
        "max_ongoing_requests": max(4 * args.max_seqs, 64),
        "health_check_period_s": 2.0,
        "health_check_timeout_s": 30.0,
        "graceful_shutdown_timeout_s": args.shutdown_grace,
    }
    if autoscaling:
        model_options["autoscaling_config"] = autoscaling
    else:
        model_options["num_replicas"] = args.replicas
    if args.router == "prefix":
        from ray.serve.config import RequestRouterConfig

        model_options["request_router_config"] = RequestRouterConfig(
            request_router_class=PrefixAffinityRouter, request_routing_stats_period_s=1.0)
    model = serve.deployment(Model).options(**model_options)
    ingress = serve.deployment(serve.ingress()(OpenAIIngress)).options(
        name="OpenAIIngress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=10_000)
    return ingress.bind(model.bind(argv), argv)


def build(options: dict[str, Any]) -> serve.Application:
    """The builder of ``serve run mistralrs.server.ray_serve:build gguf=model.gguf replicas=2`` and of
    a Serve config file's ``import_path``: ``options`` are ``python -m mistralrs serve``'s flags, by
    name (``replica_cpus`` or ``replica-cpus``)."""
    argv = argv_of(options)
    args, p = _parse(argv)
    return application(args, argv, p)


def main(args: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    """``python -m mistralrs serve --ray``: starts (or joins) a Ray cluster, runs the application
    on ``--host``/``--port`` and serves until SIGTERM or Ctrl-C."""
    argv = _replica_argv(args)
    try:
        app = application(args, argv, p)
    except ValueError as e:
        p.error(str(e))
    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, log_to_driver=args.log_level == "debug")
    serve.start(http_options={"host": args.host, "port": args.port})
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.run(app, name=APP_NAME, route_prefix="/")
    except Exception as e:  # a replica that cannot load its model fails the deployment
        print(f"{p.prog}: cannot start the Ray Serve application: {e}", file=sys.stderr)
        _leave(started_cluster=not address)
        return 1
    log.info("serving `%s` on http://%s:%d/v1 through Ray Serve (%s)", app_options(args)["model_name"],
             args.host, args.port, "autoscaling" if _autoscaling(args) else f"{args.replicas} replicas")
    stop.wait()
    _leave(started_cluster=not address)
    return 0


def _leave(*, started_cluster: bool) -> None:
    """Takes the application down; and the cluster too if this process started it (in a cluster it
    joined, other applications keep running)."""
    if started_cluster:
        serve.shutdown()
    else:
        serve.delete(APP_NAME)
    ray.shutdown()


def _replica_argv(args: argparse.Namespace) -> list[str]:
    """The flags again, from the parsed values, for the replicas and the ingress."""
    return argv_of({k: v for k, v in vars(args).items() if k not in ("ray", "ray_address")})


__all__ = ["Model", "OpenAIIngress", "RemoteRunner", "ReplicaFailed", "application", "build", "main"]
