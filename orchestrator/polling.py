"""Waiting on something outside this process: `poll_until`, the one "ask again until it holds or the
time is up" loop of the package, built on tenacity (which the retries with backoff use directly).
Pure: no Ray here.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import tenacity

T = TypeVar("T")


def poll_until(probe: Callable[[], T], done: Callable[[T], bool], *, timeout: float, interval: float) -> T:
    """Call `probe` every `interval` s until `done(result)` holds or `timeout` s have passed, and return
    the last result either way: the caller tells a timeout by it, and words its own message.

    `probe` runs at least once; an exception from it ends the wait at once and propagates.
    """
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda result: not done(result)),
        stop=tenacity.stop_after_delay(timeout),
        wait=tenacity.wait_fixed(interval),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        reraise=True,
    )
    return retrying(probe)
