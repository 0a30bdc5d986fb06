"""Tasks of the retries-and-triggers example."""
import time

from flowspec import context


def flaky(fail_times: int) -> str:
    # context.attempt counts from 1; the first `fail_times` attempts fail.
    if context.attempt <= fail_times:
        raise ConnectionError(f"transient failure on attempt {context.attempt}")
    return f"succeeded on attempt {context.attempt}"


def slow(seconds: float) -> None:
    time.sleep(seconds)


def cleanup() -> None:
    context.logger.info("cleaning up, whatever happened upstream")


def alert() -> None:
    context.logger.warning("something upstream failed: paging the on-call engineer")
