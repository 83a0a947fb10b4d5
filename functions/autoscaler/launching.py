"""Launch N instances for a queue: spot first where configured, then on-demand.

Each market's pools are tried in the order `markets.pools` gives. On-demand
asks each pool for everything still missing: a capacity error moves to the
next type in the same subnet, and only when every type failed there to the
next subnet. Spot spreads the instances over every pool (`markets.ask`); when
spot pools are exhausted and the queue allows it, the rest is launched
on-demand in the same call, and the outcome says why. EC2 may start fewer
instances than asked (MinCount=1); the remainder is carried to the next pool.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from autoscaler.config import SPOT, QueueConfig
from autoscaler.domain import Fleet, LaunchError, LaunchSpec, Pool
from autoscaler.markets import ask, pools

# The failure recorded when the time left could not finish another RunInstances.
NO_TIME_LEFT = "NoTimeLeft"


@dataclass(frozen=True)
class LaunchFailure:
    instance_type: str
    subnet_id: str
    code: str
    message: str
    market: str = ""


@dataclass
class LaunchOutcome:
    requested: int
    instance_ids: list[str] = field(default_factory=list)
    failures: list[LaunchFailure] = field(default_factory=list)
    markets: dict[str, str] = field(default_factory=dict)  # instance id → market it was launched in
    placements: dict[str, Pool] = field(default_factory=dict)  # instance id → (type, subnet) it was launched in
    fallback: str = ""  # why spot fell short, when it did
    spot_shortfall: int = 0  # instances spot could not supply

    @property
    def shortfall(self) -> int:
        return self.requested - len(self.instance_ids)

    @property
    def out_of_time(self) -> bool:
        return bool(self.failures) and self.failures[-1].code == NO_TIME_LEFT

    def count(self, market: str) -> int:
        return sum(1 for launched in self.markets.values() if launched == market)


@dataclass(frozen=True)
class LaunchRequest:
    """What stays the same over every attempt of one launch."""

    fleet_name: str
    queue: QueueConfig
    role: str
    user_data: bytes
    poll_time: datetime
    time_for_a_call: Callable[[], bool]
    image: str  # IMAGE_TAG's value for the instances


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
    spot_prices: Mapping[Pool, float] | None = None,
    time_for_a_call: Callable[[], bool] = lambda: True,
    image: str = "",
) -> LaunchOutcome:
    """Start `count` instances; a call is started only while `time_for_a_call()` holds,
    so the Lambda never ends in the middle of a RunInstances it cannot see the answer of."""
    request = LaunchRequest(fleet_name, queue, role, user_data, poll_time, time_for_a_call, image)
    outcome = LaunchOutcome(requested=count)
    attempts = 0
    for market in queue.markets:
        if outcome.shortfall <= 0 or outcome.out_of_time:
            break
        attempts = _launch_in_market(fleet, request, market, pools(queue, market, spot_prices or {}), outcome, attempts)
        if market == SPOT and outcome.shortfall > 0:
            outcome.spot_shortfall = outcome.shortfall
            outcome.fallback = _fallback_reason(queue, outcome)
    return outcome


def _launch_in_market(
    fleet: Fleet, request: LaunchRequest, market: str, ordered: list[Pool], outcome: LaunchOutcome, attempts: int
) -> int:
    """Try `ordered` pools until the shortfall is met; returns the attempt count so far."""
    for index, (instance_type, subnet_id) in enumerate(ordered):
        if outcome.shortfall <= 0:
            break
        if not request.time_for_a_call():
            message = f"{outcome.shortfall} instance(s) not started: too little time left in this run"
            outcome.failures.append(LaunchFailure(instance_type, subnet_id, NO_TIME_LEFT, message, market))
            return attempts
        attempts += 1
        asked = ask(market, outcome.shortfall, len(ordered) - index)
        spec = _spec(request, market, instance_type, subnet_id, asked, attempts)
        try:
            started = fleet.run(spec)
        except LaunchError as error:
            outcome.failures.append(LaunchFailure(instance_type, subnet_id, error.code, str(error), market))
            if not error.capacity:
                # Permission or parameter errors will not go away on another
                # pool of this market; stop rather than spam the API. (A spot
                # refusal still leaves on-demand to try.)
                break
            continue
        outcome.instance_ids.extend(started)
        outcome.markets.update(dict.fromkeys(started, market))
        outcome.placements.update(dict.fromkeys(started, (instance_type, subnet_id)))
        if len(started) < asked:
            message = f"EC2 started {len(started)} of {asked}; trying the rest elsewhere"
            outcome.failures.append(LaunchFailure(instance_type, subnet_id, "PartialLaunch", message, market))
    return attempts


def _spec(
    request: LaunchRequest, market: str, instance_type: str, subnet_id: str, count: int, attempt: int
) -> LaunchSpec:
    queue = request.queue
    token = client_token(
        (
            request.fleet_name,
            queue.name,
            request.role,
            request.poll_time.isoformat(),
            str(attempt),
            market,
            instance_type,
            subnet_id,
            str(count),
            queue.launch_template_id,
            hashlib.sha256(request.user_data).hexdigest(),
            request.image,
        )
    )
    return LaunchSpec(
        fleet=request.fleet_name,
        queue=queue.name,
        role=request.role,
        launch_template_id=queue.launch_template_id,
        instance_type=instance_type,
        subnet_id=subnet_id,
        user_data=request.user_data,
        count=count,
        client_token=token,
        market=market,
        image=request.image,
    )


def _fallback_reason(queue: QueueConfig, outcome: LaunchOutcome) -> str:
    codes = sorted({failure.code for failure in outcome.failures if failure.market == SPOT})
    then = (
        "launching the rest on-demand" if queue.on_demand_fallback else "on_demand_fallback is off: retried next poll"
    )
    return f"spot short by {outcome.shortfall} after {', '.join(codes) or 'no error'}; {then}"
