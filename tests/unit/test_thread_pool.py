"""Nothing on a request's path runs in FastAPI's thread pool: a plain `def` endpoint or
dependency is run there, a hop to another thread and back for every request (a profile at
one stream at a time found one costing about 3% of the worker's time)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from service.routes import chat, conversations, health, metrics, pages, signin, streams, usage

ROUTERS = (pages, streams, chat, conversations, usage, signin, health, metrics)


def _calls(dependant: Dependant) -> Iterator[Any]:
    if dependant.call is not None:
        yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def _is_async(call: Any) -> bool:
    if inspect.isroutine(call):
        return inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)
    dunder = getattr(call, "__call__", None)  # noqa: B004 - a class instance as a dependency
    return inspect.iscoroutinefunction(dunder) or inspect.isasyncgenfunction(dunder)


def test_every_endpoint_and_dependency_is_async() -> None:
    routes = [
        route for module in ROUTERS for route in module.router.routes if isinstance(route, APIRoute)
    ]
    assert len(routes) > 10  # the app's own routes were found
    threaded = sorted(
        {
            f"{route.path}: {getattr(call, '__qualname__', call)}"
            for route in routes
            for call in _calls(route.dependant)
            if not _is_async(call)
        }
    )
    assert threaded == []
