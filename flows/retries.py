"""Prefect tasks that retry only what a retry can fix: a file system or a connection that failed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE


def is_transient(exc: BaseException) -> bool:
    """True for failures of I/O (files, Redis, the tracking server down or failing); False for bad data or models."""
    import redis

    from models.registry import is_transient as registry_transient

    if registry_transient(exc):
        return True
    if _unreachable_server(exc):
        return True
    return isinstance(exc, (OSError, ConnectionError, redis.ConnectionError, redis.TimeoutError))


def _unreachable_server(exc: BaseException) -> bool:
    """A tracking server that did not answer: MLflow raises its own exception from the HTTP client's one.

    Its message names the URI ("API request to http://... failed with exception ..."); the cause,
    a refused or dropped connection (or a timeout), is in the exception's chain.
    """
    import requests

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (requests.ConnectionError, requests.Timeout)):
            return True
        current = current.__cause__ or current.__context__
    return False


def retry_on_io(_task: Any, _run: Any, state: Any) -> bool:
    """Prefect retry condition: retry a failed task only when its failure was transient."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classified, not swallowed: the task stays failed when not transient
        return is_transient(exc)
    return False


def io_task(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` as a task that retries twice, a second apart, when it fails on I/O."""
    return task(name=name, retries=2, retry_delay_seconds=1, retry_condition_fn=retry_on_io, cache_policy=NO_CACHE)(fn)
