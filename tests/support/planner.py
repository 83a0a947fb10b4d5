"""The planner's inputs as tests build them: a queue, instances of given ages, and hypothesis strategies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from autoscaler.config import QueueConfig
from autoscaler.lifecycle import Instance, Timeouts
from autoscaler.planner import QueueMetrics

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TIMEOUTS = Timeouts(bootstrap_seconds=1200, ready_grace_seconds=60)
QUEUE = "nixos-x86-aws"


def queue(**overrides: object) -> QueueConfig:
    base = {
        "name": QUEUE,
        "architecture": "x86_64",
        "launch_template_id": "lt-1",
        "instance_types": ("c7i.4xlarge",),
        "subnet_ids": ("subnet-1",),
        "max_instances": 10,
        "agents_per_instance": 5,
    }
    return QueueConfig(**{**base, **overrides})  # type: ignore[arg-type]


def instance(
    age_seconds: int, bootstrap: str = "pending", role: str = "burst", ready_ago: int | None = None
) -> Instance:
    return Instance(
        instance_id=f"i-{age_seconds}-{bootstrap}-{role}-{ready_ago}",
        fleet="f",
        queue=QUEUE,
        role=role,
        bootstrap=bootstrap,
        launch_time=NOW - timedelta(seconds=age_seconds),
        state="running",
        ready_at=None if ready_ago is None else NOW - timedelta(seconds=ready_ago),
    )


counts = st.integers(min_value=0, max_value=200)
metrics_strategy = st.builds(QueueMetrics, scheduled=counts, running=counts, waiting=counts, total=counts)
instance_strategy = st.builds(
    instance,
    age_seconds=st.integers(min_value=0, max_value=4000),
    bootstrap=st.sampled_from(["pending", "complete", "failed", ""]),
    role=st.sampled_from(["floor", "burst"]),
    ready_ago=st.one_of(st.none(), st.integers(min_value=0, max_value=300)),
)
config_strategy = st.builds(
    lambda low, extra, per, waiting: queue(
        min_instances=low, max_instances=max(1, low + extra), agents_per_instance=per, include_waiting=waiting
    ),
    st.integers(min_value=0, max_value=5),
    st.integers(min_value=0, max_value=30),
    st.integers(min_value=1, max_value=8),
    st.booleans(),
)
