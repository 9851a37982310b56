"""Requests pickle as the arguments of their constructors, so they cross process
boundaries (multiprocessing, a Ray Serve ingress handing requests to replicas).
Responses pickle through their JSON form, in the engine's own classes."""

from __future__ import annotations

import copyreg
import inspect
from typing import Any, Callable

from mistralrs._mistralrs import ChatCompletionRequest, CompletionRequest


def _rebuild(cls: type, kwargs: dict[str, Any]) -> Any:
    return cls(**kwargs)


def _reducer(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    # The constructor's parameters are the attributes, one for one (get_all).
    names = list(inspect.signature(cls).parameters)

    def reduce(obj: Any) -> tuple[Any, ...]:
        return _rebuild, (cls, {n: getattr(obj, n) for n in names})

    return reduce


for _cls in (ChatCompletionRequest, CompletionRequest):
    copyreg.pickle(_cls, _reducer(_cls))
