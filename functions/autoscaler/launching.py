"""Launch N instances for a queue, falling back across instance types and subnets.

Subnets are the outer loop and instance types the inner one: a capacity
error moves to the next type in the same subnet, and only when every type
failed there to the next subnet. EC2 may start fewer instances than asked
(MinCount=1); the remainder is carried to the next attempt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from autoscaler.config import QueueConfig
from autoscaler.fleet import Fleet, LaunchError, LaunchSpec


@dataclass(frozen=True)
class LaunchFailure:
    instance_type: str
    subnet_id: str
    code: str
    message: str


@dataclass
class LaunchOutcome:
    requested: int
    instance_ids: list[str] = field(default_factory=list)
    failures: list[LaunchFailure] = field(default_factory=list)

    @property
    def shortfall(self) -> int:
        return self.requested - len(self.instance_ids)


def client_token(spec_fields: tuple[str, ...]) -> str:
    """An idempotency token that changes whenever any request parameter does.

    A retried call (botocore retries send the same token) cannot launch
    twice; a different request never reuses a token, which EC2 would reject.
    """
    return hashlib.sha256("\x1f".join(spec_fields).encode()).hexdigest()[:64]


def launch(
    fleet: Fleet,
    fleet_name: str,
    queue: QueueConfig,
    role: str,
    count: int,
    user_data: bytes,
    poll_time: datetime,
    image: str = "",
) -> LaunchOutcome:
    outcome = LaunchOutcome(requested=count)
    user_data_hash = hashlib.sha256(user_data).hexdigest()
    attempt = 0
    for subnet_id in queue.subnet_ids:
        for instance_type in queue.instance_types:
            if outcome.shortfall <= 0:
                return outcome
            attempt += 1
            remaining = outcome.shortfall
            token = client_token(
                (
                    fleet_name,
                    queue.name,
                    role,
                    poll_time.isoformat(),
                    str(attempt),
                    instance_type,
                    subnet_id,
                    str(remaining),
                    queue.launch_template_id,
                    user_data_hash,
                    image,
                )
            )
            spec = LaunchSpec(
                fleet=fleet_name,
                queue=queue.name,
                role=role,
                launch_template_id=queue.launch_template_id,
                instance_type=instance_type,
                subnet_id=subnet_id,
                user_data=user_data,
                count=remaining,
                client_token=token,
                image=image,
            )
            try:
                started = fleet.run(spec)
            except LaunchError as error:
                outcome.failures.append(LaunchFailure(instance_type, subnet_id, error.code, str(error)))
                if not error.capacity:
                    # Permission or parameter errors will not go away on
                    # another type or subnet; stop rather than spam the API.
                    return outcome
                continue
            outcome.instance_ids.extend(started)
            if len(started) < remaining:
                message = f"EC2 started {len(started)} of {remaining}; trying the rest elsewhere"
                outcome.failures.append(LaunchFailure(instance_type, subnet_id, "PartialLaunch", message))
    return outcome
