"""The OpenAI-compatible HTTP server (SPEC §7): ``python -m mistralrs serve`` or
``mistralrs-serve``, and ``create_app(runner)`` to mount it in your own FastAPI app.

Needs the ``server`` extra: ``pip install mistralrs[server]`` (FastAPI, uvicorn,
prometheus-client).
"""

try:
    from mistralrs.server.app import create_app
    from mistralrs.server.cli import main
except ImportError as e:  # pragma: no cover - depends on the environment
    if e.name in {"fastapi", "starlette", "uvicorn", "prometheus_client", "pydantic"}:
        raise ImportError(
            f"the mistralrs server needs `{e.name}`: pip install 'mistralrs[server]'", name=e.name
        ) from e
    raise

__all__ = ["create_app", "main"]
