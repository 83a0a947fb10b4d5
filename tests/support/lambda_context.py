"""A stand-in for the Lambda context object, with what the handlers and Powertools read,
and the simulated clock the handlers run on in tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta


@dataclass
class SimulatedClock:
    """The handlers' clock in tests: a sleep returns at once and moves the clock on.

    `now()` is the wall clock (frozen by freezegun where a test freezes it) plus the
    time slept, so a test reads what the handler waited for, not how long it ran.
    """

    slept: list[float] = field(default_factory=list)

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.elapsed)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    @property
    def elapsed(self) -> float:
        return sum(self.slept)


@dataclass
class LambdaContext:
    # The time the invocation has left when it starts; it counts down as the handler
    # sleeps on `clock`, never with the machine's own speed.
    remaining_seconds: float = 60.0
    function_name: str = "buildkite-autoscaler-test"
    memory_limit_in_mb: int = 128
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:buildkite-autoscaler-test"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    clock: SimulatedClock = field(default_factory=SimulatedClock)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.remaining_seconds - self.clock.elapsed) * 1000))
