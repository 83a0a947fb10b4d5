"""Idempotency tokens: a retry never launches twice, a changed request never reuses a token."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from autoscaler.config import QueueConfig
from autoscaler.fleet import LaunchError, LaunchSpec
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
