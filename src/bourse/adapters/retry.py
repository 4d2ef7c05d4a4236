"""Retry until it works, with capped exponential backoff and jitter (tenacity).

Every loop that must not give up (publishing a stage's outputs, a consumer's batch, the SQL and
Redis writes of the projections, the id lease) is written the same way:

    async for attempt in retrying(first_s=0.1, max_s=5.0, on_failure=record):
        with attempt:
            await work()

The pause before attempt n+1 is `min(first_s * 2**(n-1) + uniform(0, first_s), max_s)`: it grows,
never passes `max_s`, and the jitter keeps many clients of one server from retrying in step.
Only `Exception`s are retried: a cancellation (`asyncio.CancelledError`) ends the loop at once,
whether it hits an attempt or a pause. tenacity over stamina: stamina's per-failure hooks are
process-wide instrumentation, and each loop here records its own `failures` and `last_error`.
"""

from __future__ import annotations

from collections.abc import Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_never,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

OnFailure = Callable[[BaseException, float], None]
"""Called after each failed attempt that will be retried, with its error and the pause before
the next attempt (for the health counters and the log)."""


class _StopWhen(stop_base):
    """tenacity stop condition from a plain predicate (e.g. "the service is stopping")."""

    def __init__(self, predicate: Callable[[], bool]) -> None:
        self.predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.predicate()


def retrying(
    *,
    first_s: float,
    max_s: float,
    on_failure: OnFailure | None = None,
    retry_on: Callable[[BaseException], bool] | None = None,
    stop_when: Callable[[], bool] | None = None,
) -> AsyncRetrying:
    """A retry loop forever (or until `stop_when()` is true after a failure, which then raises
    that failure); `retry_on` narrows which exceptions are retried (others raise at once)."""

    def retryable(exc: BaseException) -> bool:
        return isinstance(exc, Exception) and (retry_on is None or retry_on(exc))

    def before_sleep(state: RetryCallState) -> None:
        assert on_failure is not None
        assert state.outcome is not None
        error = state.outcome.exception()
        assert error is not None
        on_failure(error, state.upcoming_sleep)

    return AsyncRetrying(
        wait=wait_exponential_jitter(multiplier=first_s, max=max_s, jitter=first_s),
        retry=retry_if_exception(retryable),
        stop=_StopWhen(stop_when) if stop_when is not None else stop_never,
        before_sleep=before_sleep if on_failure is not None else None,
        reraise=True,
    )
