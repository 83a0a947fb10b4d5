"""The reaper's pure policy: guards, reasons, the cap and its order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoscaler.lifecycle import LIVE_STATES, Instance, Stage, Timeouts, stage_of
from autoscaler.reaping import REASON_FAILED, REASON_STUCK, ReapDecision, plan_reap

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FLEET = "ci"
TIMEOUTS = Timeouts(bootstrap_seconds=1200, ready_grace_seconds=0)
OLD = 3600
YOUNG = 300
NOT_LIVE = ("shutting-down", "stopping", "stopped", "terminated")


def instance(
    instance_id: str,
    *,
    age: int,
    bootstrap: str = "pending",
    fleet: str = FLEET,
    state: str = "running",
    ready_at: datetime | None = None,
) -> Instance:
    return Instance(
        instance_id=instance_id,
        fleet=fleet,
        queue="nixos-x86-aws",
        role="burst",
        bootstrap=bootstrap,
        launch_time=NOW - timedelta(seconds=age),
        state=state,
        ready_at=ready_at,
    )


def reaped(instances: list[Instance], cap: int = 20) -> list[tuple[str, str]]:
    plan = plan_reap(instances, FLEET, NOW, TIMEOUTS, cap)
    return [(decision.instance_id, decision.reason) for decision in plan.reap]


def test_a_stuck_instance_is_reaped_with_its_age_and_queue() -> None:
    plan = plan_reap([instance("i-old", age=OLD)], FLEET, NOW, TIMEOUTS, cap=20)

    (decision,) = plan.reap
    assert decision.instance_id == "i-old"
    assert decision.reason == REASON_STUCK
    assert decision.age_seconds == OLD
    assert decision.queue == "nixos-x86-aws"
    assert decision.launch_time == NOW - timedelta(seconds=OLD)
    assert plan.deferred == ()


def test_a_failed_instance_is_reaped_at_once() -> None:
    assert reaped([instance("i-failed", age=5, bootstrap="failed")]) == [("i-failed", REASON_FAILED)]


@pytest.mark.parametrize("state", ["pending", "running"])
def test_both_live_states_are_reaped(state: str) -> None:
    assert reaped([instance("i-1", age=OLD, state=state)]) == [("i-1", REASON_STUCK)]


def test_stuck_starts_after_the_timeout_not_at_it() -> None:
    at_timeout = instance("i-at", age=TIMEOUTS.bootstrap_seconds)
    past_timeout = instance("i-past", age=TIMEOUTS.bootstrap_seconds + 1)

    assert reaped([at_timeout, past_timeout]) == [("i-past", REASON_STUCK)]


def test_a_young_booting_instance_is_left_alone() -> None:
    assert reaped([instance("i-young", age=YOUNG)]) == []


@pytest.mark.parametrize(
    "ready_at",
    [None, NOW - timedelta(seconds=OLD - 60), NOW],
    ids=["no-ready-at", "ready-long-ago", "ready-just-now"],
)
def test_a_completed_bootstrap_is_never_reaped(ready_at: datetime | None) -> None:
    assert reaped([instance("i-done", age=OLD * 10, bootstrap="complete", ready_at=ready_at)]) == []


@pytest.mark.parametrize("fleet", ["other", "", "ci-2", "CI"])
@pytest.mark.parametrize("bootstrap", ["failed", "pending"])
def test_an_instance_of_another_fleet_or_none_is_never_reaped(fleet: str, bootstrap: str) -> None:
    assert reaped([instance("i-foreign", age=OLD, bootstrap=bootstrap, fleet=fleet)]) == []


@pytest.mark.parametrize("state", NOT_LIVE)
@pytest.mark.parametrize("bootstrap", ["failed", "pending"])
def test_an_instance_already_going_away_is_ignored(state: str, bootstrap: str) -> None:
    assert reaped([instance("i-going", age=OLD, bootstrap=bootstrap, state=state)]) == []


def test_an_empty_fleet_name_matches_nothing() -> None:
    # Untagged instances have fleet "": a missing setting must not make them ours.
    plan = plan_reap([instance("i-untagged", age=OLD, fleet="")], "", NOW, TIMEOUTS, cap=20)
    assert plan.reap == plan.deferred == ()


@pytest.mark.parametrize("bootstrap", ["", "unknown"])
def test_a_bootstrap_tag_missing_or_unknown_counts_as_not_complete(bootstrap: str) -> None:
    # The same answer as stage_of gives the scaler: not complete after the timeout is stuck.
    assert reaped([instance("i-odd", age=OLD, bootstrap=bootstrap)]) == [("i-odd", REASON_STUCK)]


def test_the_cap_takes_the_failed_first_then_the_oldest_stuck() -> None:
    instances = [
        instance("i-stuck-2h", age=2 * OLD),
        instance("i-failed-young", age=10, bootstrap="failed"),
        instance("i-stuck-3h", age=3 * OLD),
        instance("i-stuck-1h", age=OLD),
        instance("i-failed-old", age=OLD, bootstrap="failed"),
    ]

    plan = plan_reap(instances, FLEET, NOW, TIMEOUTS, cap=3)

    assert [decision.instance_id for decision in plan.reap] == ["i-failed-old", "i-failed-young", "i-stuck-3h"]
    assert [decision.instance_id for decision in plan.deferred] == ["i-stuck-2h", "i-stuck-1h"]


def test_a_cap_of_zero_defers_everything_and_a_negative_one_is_refused() -> None:
    instances = [instance("i-1", age=OLD), instance("i-2", age=1, bootstrap="failed")]

    assert plan_reap(instances, FLEET, NOW, TIMEOUTS, cap=0).reap == ()
    assert len(plan_reap(instances, FLEET, NOW, TIMEOUTS, cap=0).deferred) == 2
    with pytest.raises(ValueError, match="cap"):
        plan_reap(instances, FLEET, NOW, TIMEOUTS, cap=-1)


# Properties over arbitrary fleets: the guards hold whatever the mix.

fleets = st.sampled_from([FLEET, "other", ""])
states = st.sampled_from([*LIVE_STATES, *NOT_LIVE])
bootstraps = st.sampled_from(["pending", "complete", "failed", "", "unknown"])
ages = st.integers(min_value=-600, max_value=5 * OLD)


@st.composite
def instance_lists(draw: st.DrawFn) -> list[Instance]:
    count = draw(st.integers(min_value=0, max_value=25))
    return [
        Instance(
            instance_id=f"i-{index:017x}",
            fleet=draw(fleets),
            queue=draw(st.sampled_from(["nixos-x86-aws", "nixos-arm-aws"])),
            role="burst",
            bootstrap=draw(bootstraps),
            launch_time=NOW - timedelta(seconds=draw(ages)),
            state=draw(states),
            ready_at=draw(st.none() | ages.map(lambda age: NOW - timedelta(seconds=age))),
        )
        for index in range(count)
    ]


timeout_lists = st.builds(
    Timeouts, st.integers(min_value=60, max_value=2 * OLD), st.integers(min_value=0, max_value=300)
)
caps = st.integers(min_value=0, max_value=30)


@given(instance_lists(), timeout_lists, caps)
def test_property_never_a_complete_foreign_or_dead_instance_and_never_over_the_cap(
    instances: list[Instance], timeouts: Timeouts, cap: int
) -> None:
    plan = plan_reap(instances, FLEET, NOW, timeouts, cap)
    by_id = {candidate.instance_id: candidate for candidate in instances}

    assert len(plan.reap) <= cap
    for decision in (*plan.reap, *plan.deferred):
        chosen = by_id[decision.instance_id]
        assert chosen.fleet == FLEET
        assert chosen.state in LIVE_STATES
        assert chosen.bootstrap != "complete"


@given(instance_lists(), timeout_lists, caps)
def test_property_due_means_stuck_or_failed_by_stage_of(
    instances: list[Instance], timeouts: Timeouts, cap: int
) -> None:
    plan = plan_reap(instances, FLEET, NOW, timeouts, cap)
    reasons = {Stage.FAILED: REASON_FAILED, Stage.STUCK: REASON_STUCK}
    expected = {
        candidate.instance_id: reasons[stage_of(candidate, NOW, timeouts)]
        for candidate in instances
        if candidate.fleet == FLEET and candidate.state in LIVE_STATES and stage_of(candidate, NOW, timeouts) in reasons
    }
    decided = [(decision.instance_id, decision.reason) for decision in (*plan.reap, *plan.deferred)]

    assert dict(decided) == expected
    assert len(decided) == len(expected)  # nothing twice
    assert len(plan.reap) == min(cap, len(expected))


@given(instance_lists(), timeout_lists, caps)
def test_property_what_waits_for_the_next_run_never_outranks_what_is_reaped(
    instances: list[Instance], timeouts: Timeouts, cap: int
) -> None:
    plan = plan_reap(instances, FLEET, NOW, timeouts, cap)

    def rank(decision: ReapDecision) -> tuple[bool, datetime]:
        return (decision.reason != REASON_FAILED, decision.launch_time)

    if plan.reap and plan.deferred:
        assert max(map(rank, plan.reap)) <= min(map(rank, plan.deferred))


@pytest.mark.parametrize(("image", "reaped_at_age"), [("1.0.0/7", 301), ("stock", 1201), ("", 1201)])
def test_the_bootstrap_timeout_follows_the_boot_path(image: str, reaped_at_age: int) -> None:
    timeouts = Timeouts(bootstrap_seconds=1200, ready_grace_seconds=0, baked_bootstrap_seconds=300)

    def stage(age: int) -> Stage:
        booting = Instance("i-1", FLEET, "q", "burst", "pending", NOW - timedelta(seconds=age), "running", image=image)
        return stage_of(booting, NOW, timeouts)

    assert stage(reaped_at_age - 2) == Stage.BOOTING
    assert stage(reaped_at_age) == Stage.STUCK
