"""Idempotency tokens: a retry never launches twice, a changed request never reuses a token."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from autoscaler.config import QueueConfig
from autoscaler.domain import LaunchError, LaunchSpec
from autoscaler.launching import launch

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
QUEUE = QueueConfig(
    name="nixos-x86-aws",
    architecture="x86_64",
    launch_template_id="lt-1",
    instance_types=("c7i.4xlarge", "m7i.4xlarge"),
    subnet_ids=("subnet-a", "subnet-b"),
    max_instances=10,
)


@dataclass
class RecordingFleet:
    """Starts what it is asked for, except the (type, subnet) pairs without capacity."""

    no_capacity: set[tuple[str, str]] = field(default_factory=set)
    specs: list[LaunchSpec] = field(default_factory=list)

    def run(self, spec: LaunchSpec) -> list[str]:
        self.specs.append(spec)
        if (spec.instance_type, spec.subnet_id) in self.no_capacity:
            raise LaunchError("InsufficientInstanceCapacity", "none left")
        return [f"i-{len(self.specs)}-{n}" for n in range(spec.count)]


def tokens(fleet: RecordingFleet) -> list[str]:
    return [spec.client_token for spec in fleet.specs]


def run(fleet: RecordingFleet, **changes: object) -> None:
    defaults = {"fleet_name": "ci", "queue": QUEUE, "role": "burst", "count": 2, "user_data": b"#cloud-config"}
    launch(fleet, **{"poll_time": NOW, **defaults, **changes})


def test_the_same_request_gets_the_same_token() -> None:
    first, second = RecordingFleet(), RecordingFleet()
    run(first)
    run(second)
    assert tokens(first) == tokens(second)
    assert all(0 < len(token) <= 64 for token in tokens(first))


def test_any_changed_parameter_changes_the_token() -> None:
    base = RecordingFleet()
    run(base)
    variants = {
        "poll time": {"poll_time": NOW + timedelta(seconds=10)},
        "count": {"count": 3},
        "role": {"role": "floor"},
        "fleet": {"fleet_name": "other"},
        "user-data": {"user_data": b"#cloud-config\n# changed"},
        "launch template": {"queue": replace(QUEUE, launch_template_id="lt-2")},
        "queue": {"queue": replace(QUEUE, name="nixos-arm-aws")},
    }
    for name, changes in variants.items():
        fleet = RecordingFleet()
        run(fleet, **changes)
        assert tokens(fleet)[0] != tokens(base)[0], name


def test_each_fallback_attempt_has_its_own_token() -> None:
    fleet = RecordingFleet(no_capacity={("c7i.4xlarge", "subnet-a"), ("m7i.4xlarge", "subnet-a")})
    run(fleet)
    assert [(s.instance_type, s.subnet_id) for s in fleet.specs] == [
        ("c7i.4xlarge", "subnet-a"),
        ("m7i.4xlarge", "subnet-a"),
        ("c7i.4xlarge", "subnet-b"),
    ]
    assert len(set(tokens(fleet))) == 3


def test_a_non_capacity_error_stops_the_fallback() -> None:
    class Refusing(RecordingFleet):
        def run(self, spec: LaunchSpec) -> list[str]:
            self.specs.append(spec)
            raise LaunchError("UnauthorizedOperation", "not allowed")

    fleet = Refusing()
    outcome = launch(fleet, "ci", QUEUE, "burst", 2, b"", NOW)
    assert len(fleet.specs) == 1
    assert [failure.code for failure in outcome.failures] == ["UnauthorizedOperation"]
    assert outcome.shortfall == 2


SPOT_QUEUE = replace(QUEUE, capacity_type="spot")


def pools_of(fleet: RecordingFleet) -> list[tuple[str, str, str, int]]:
    return [(spec.market, spec.instance_type, spec.subnet_id, spec.count) for spec in fleet.specs]


def test_spot_asks_the_cheapest_pools_first_and_spreads_the_count() -> None:
    fleet = RecordingFleet()
    prices = {("m7i.4xlarge", "subnet-b"): 0.2, ("c7i.4xlarge", "subnet-b"): 0.3}
    outcome = launch(fleet, "ci", SPOT_QUEUE, "burst", 5, b"", NOW, prices)

    assert pools_of(fleet) == [
        ("spot", "m7i.4xlarge", "subnet-b", 2),
        ("spot", "c7i.4xlarge", "subnet-b", 1),
        ("spot", "c7i.4xlarge", "subnet-a", 1),
        ("spot", "m7i.4xlarge", "subnet-a", 1),
    ]
    assert outcome.count("spot") == 5
    assert not outcome.fallback


def test_a_spot_pool_without_capacity_passes_its_share_to_the_pools_left() -> None:
    fleet = RecordingFleet(no_capacity={("c7i.4xlarge", "subnet-a"), ("m7i.4xlarge", "subnet-a")})
    # The recording fleet has no markets: a pool without capacity has none in either.
    outcome = launch(fleet, "ci", SPOT_QUEUE, "burst", 4, b"", NOW)

    assert pools_of(fleet) == [
        ("spot", "c7i.4xlarge", "subnet-a", 1),
        ("spot", "m7i.4xlarge", "subnet-a", 2),
        ("spot", "c7i.4xlarge", "subnet-b", 2),
        ("spot", "m7i.4xlarge", "subnet-b", 2),
    ]
    assert (outcome.count("spot"), outcome.shortfall) == (4, 0)
    assert len(set(tokens(fleet))) == 4


def test_the_same_pool_in_another_market_gets_another_token() -> None:
    spot, on_demand = RecordingFleet(), RecordingFleet()
    run(spot, queue=replace(SPOT_QUEUE, subnet_ids=("subnet-a",), instance_types=("c7i.4xlarge",)))
    run(on_demand, queue=replace(QUEUE, subnet_ids=("subnet-a",), instance_types=("c7i.4xlarge",)))
    assert tokens(spot) != tokens(on_demand)


POOLS = [(kind, subnet) for subnet in QUEUE.subnet_ids for kind in QUEUE.instance_types]


@dataclass
class TwoMarketFleet(RecordingFleet):
    """No capacity in the given pools of the given market; a partial launch elsewhere."""

    no_spot: set[tuple[str, str]] = field(default_factory=set)
    at_most: int = 3

    def run(self, spec: LaunchSpec) -> list[str]:
        self.specs.append(spec)
        empty = self.no_spot if spec.market == "spot" else self.no_capacity
        if (spec.instance_type, spec.subnet_id) in empty:
            raise LaunchError("InsufficientInstanceCapacity", "none left")
        return [f"i-{len(self.specs)}-{n}" for n in range(min(spec.count, self.at_most))]


@given(
    count=st.integers(1, 30),
    no_spot=st.sets(st.sampled_from(POOLS)),
    no_on_demand=st.sets(st.sampled_from(POOLS)),
    prices=st.dictionaries(st.sampled_from(POOLS), st.floats(0.01, 5)),
    fallback=st.booleans(),
    at_most=st.integers(1, 10),
)
def test_spot_launches_account_for_every_instance(
    count: int,
    no_spot: set[tuple[str, str]],
    no_on_demand: set[tuple[str, str]],
    prices: dict[tuple[str, str], float],
    fallback: bool,
    at_most: int,
) -> None:
    fleet = TwoMarketFleet(no_capacity=no_on_demand, no_spot=no_spot, at_most=at_most)
    queue = replace(SPOT_QUEUE, on_demand_fallback=fallback)
    outcome = launch(fleet, "ci", queue, "burst", count, b"", NOW, prices)

    assert len(outcome.instance_ids) + outcome.shortfall == count
    assert outcome.shortfall >= 0
    assert set(outcome.markets) == set(outcome.instance_ids)
    spot = [(s.instance_type, s.subnet_id) for s in fleet.specs if s.market == "spot"]
    # Spot tries each pool at most once, cheapest first, and never after on-demand.
    assert len(spot) == len(set(spot))
    assert [prices.get(pool, float("inf")) for pool in spot] == sorted(prices.get(pool, float("inf")) for pool in spot)
    assert [s.market for s in fleet.specs] == sorted((s.market for s in fleet.specs), key=lambda m: m != "spot")
    # On-demand is asked only for what spot could not supply, and only with the fallback on.
    on_demand_asked = sum(1 for s in fleet.specs if s.market == "on-demand")
    assert (on_demand_asked > 0) == (fallback and outcome.spot_shortfall > 0)
    assert bool(outcome.fallback) == (outcome.spot_shortfall > 0)
    assert len(set(tokens(fleet))) == len(fleet.specs)
