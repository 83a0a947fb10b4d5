"""A stand-in for the Lambda context object, with what the handlers and Powertools read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LambdaContext:
    function_name: str = "buildkite-autoscaler-test"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:buildkite-autoscaler-test"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    remaining_millis: int = 60_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_millis
