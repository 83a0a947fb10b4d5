"""A stand-in for the Lambda context object, with what the handlers and Powertools read."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class LambdaContext:
    # The time the invocation has left when it starts; it counts down in real time, as in Lambda.
    remaining_seconds: float = 60.0
    function_name: str = "buildkite-autoscaler-test"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:buildkite-autoscaler-test"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    _deadline: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._deadline = _seconds() + self.remaining_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - _seconds()) * 1000))


def _seconds() -> float:
    # Not time.monotonic: freezegun freezes that, and a frozen countdown never runs out.
    return time.clock_gettime(time.CLOCK_MONOTONIC)
