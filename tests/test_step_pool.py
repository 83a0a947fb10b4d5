"""userdata/steps/pool.sh alone: park on the first boot, return to the pool when told."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.instance import INSTANCE_ID
from tests.support.steps import put, root_of, run_step, settings, tags

STARTED_AT = "buildkite-autoscaler:started-at"
ON_EXIT = "buildkite-autoscaler:on-exit"


@pytest.mark.parametrize(
    ("tags_", "park"),
    [
        ("Name=pool-1\nbuildkite-autoscaler:fleet=ci-fleet", "true"),
        (f"Name=pool-1\n{STARTED_AT}=2026-12-05T08:00:00Z", "false"),
        # The key itself, not a key that merely holds it.
        (f"{STARTED_AT}-old=1", "true"),
    ],
)
def test_read_pool_state_parks_until_the_scaler_tags_started_at(tmp_path: Path, tags_: str, park: str) -> None:
    run = run_step(
        tmp_path,
        "pool",
        'read_pool_state\necho "PARK=$PARK"',
        commands=["curl"],
        real=["grep", "sed"],
        env=settings(STUB_TAGS=tags_),
    )

    assert (run.returncode, run.stdout) == (0, f"PARK={park}\n"), run.console
    assert run.calls_of("curl")[-1][-1].endswith("/meta-data/tags/instance/")


def test_read_pool_state_fails_without_the_instance_tags_in_the_metadata(tmp_path: Path) -> None:
    run = run_step(tmp_path, "pool", "read_pool_state", commands=["curl"], real=["grep", "sed"], env=settings())

    assert run.returncode == 1
    assert "needs InstanceMetadataTags=enabled in its launch template" in run.stderr


@pytest.mark.parametrize(("stub_tags", "code"), [(f"{ON_EXIT}=stop", 0), (f"{ON_EXIT}=terminate", 1), ("Name=x", 1)])
def test_check_on_exit_goes_on_only_when_the_scaler_says_stop(tmp_path: Path, stub_tags: str, code: int) -> None:
    run = run_step(
        tmp_path, "pool", "check_on_exit\necho on", commands=["curl"], real=["awk"], env=settings(STUB_TAGS=stub_tags)
    )

    assert run.returncode == code, run.console
    assert (run.stdout == "on\n") == (code == 0)
    if code:
        assert "needs no instance" in run.stderr


@pytest.mark.parametrize(
    ("role", "mode", "code"), [("pool", "overlayroot", 0), ("pool", "ebs", 1), ("burst", "overlayroot", 1)]
)
def test_check_release_returns_only_an_overlayroot_pool_instance(
    tmp_path: Path, role: str, mode: str, code: int
) -> None:
    run = run_step(tmp_path, "pool", "check_release", env=settings(BK_ROLE=role, BK_ROOT_MODE=mode))

    assert run.returncode == code, run.console
    assert run.calls == []


@pytest.mark.parametrize("name", ["BK_ON_EXIT_TAG", "BK_ON_EXIT_STOP", "BK_BOOTSTRAP_POOLED"])
def test_check_release_names_a_pool_setting_the_settings_lack(tmp_path: Path, name: str) -> None:
    env = settings(BK_ROLE="pool", BK_ROOT_MODE="overlayroot", **{name: ""})

    run = run_step(tmp_path, "pool", "check_release", env=env)

    assert run.returncode == 1
    assert f"does not set {name}" in run.stderr


def test_stop_into_pool_tags_pooled_before_it_stops(tmp_path: Path) -> None:
    run = run_step(
        tmp_path, "pool", f"INSTANCE_ID={INSTANCE_ID}\nstop_into_pool", commands=["aws"], real=["grep"], env=settings()
    )

    assert run.returncode == 0, run.console
    tag, stop = run.calls
    assert tags(tag) == {"buildkite-autoscaler:bootstrap": "pooled"}
    assert stop == ["aws", "ec2", "stop-instances", "--region", "us-west-2", "--instance-ids", INSTANCE_ID]


def test_stop_into_pool_does_not_stop_an_untagged_instance(tmp_path: Path) -> None:
    run = run_step(
        tmp_path,
        "pool",
        f"INSTANCE_ID={INSTANCE_ID}\nstop_into_pool",
        commands=["aws"],
        real=["grep", "awk"],
        env=settings(),
        fail={"aws ec2 create-tags": (254, 9, "Could not connect to the endpoint URL")},
    )

    assert run.returncode == 1
    assert len(run.calls) == 1


def test_warm_volume_reads_every_file_and_runs_nothing_else(tmp_path: Path) -> None:
    put(root_of(tmp_path), "/usr/lib/a", "a")
    put(root_of(tmp_path), "/var/lib/b", "b", mode=0o000)
    run = run_step(tmp_path, "pool", "warm_volume", real=["find"])

    assert run.returncode == 0, run.console
    assert run.calls == []
