"""A warm-pool instance's side, under the stub harness of test_bootstrap_script.

Its first boot installs (stock AMI) or refreshes (baked image), then parks:
it reads its volume once, tags itself pooled and stops. A start by the
scaler (which tags started-at first) runs the per-boot path only. When its
agent exits, it stops back into the pool if the scaler's on-exit tag says
the pool is short, and terminates (powers off) otherwise.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tests.support import instance as harness
from tests.support.instance import (
    INSTANCE_ID,
    X86_QUEUE,
    Run,
    boot,
    install_user_data,
    make_settings,
    read_calls,
    reboot,
    run_script,
)

from autoscaler.config import UserDataSettings
from autoscaler.userdata import render_user_data

stubs = harness.stubs

POWEROFF = ["systemctl", "--no-block", "poweroff"]
STOP_SELF = ["aws", "ec2", "stop-instances", "--region", "us-west-2", "--instance-ids", INSTANCE_ID]
TAG_POOLED = "Key=buildkite-autoscaler:bootstrap,Value=pooled"
PARK = ["systemctl", "start", "--no-block", "buildkite-pool-park.service"]
START_BOOTSTRAP = ["systemctl", "start", "--no-block", "buildkite-bootstrap.service"]
# The instance's tags as its metadata shows them: before and after the scaler started it.
NEVER_STARTED = "buildkite-autoscaler:fleet=ci-fleet\nbuildkite-autoscaler:role=pool"
STARTED = NEVER_STARTED + "\nbuildkite-autoscaler:started-at=2026-11-26T08:00:00+00:00"


@pytest.fixture(autouse=True)
def reads_files(stubs: Path) -> None:
    """`find` reads the volume in park; a stub here, like every command that touches the system."""
    (stubs / "find").unlink()
    (stubs / "find").symlink_to(harness.STUB)


def run(
    tmp_path: Path,
    stubs: Path,
    script: str,
    *args: str,
    role: str = "pool",
    settings: UserDataSettings | None = None,
    **env: str,
) -> Run:
    root = tmp_path / "root"
    install_user_data(root, render_user_data(settings or make_settings(), X86_QUEUE, role, "ci-fleet"))
    log = tmp_path / "calls.log"
    result = subprocess.run(
        ["/bin/bash", str(root / script), *args],
        check=False,
        env=harness.stub_env(stubs, root, log, **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    return Run(result.returncode, result.stdout + result.stderr, read_calls(log), root)


def agent_exited(tmp_path: Path, stubs: Path, tags: str, **kwargs: object) -> Run:
    return run(
        tmp_path,
        stubs,
        "usr/local/lib/buildkite-bootstrap/agent-exited.sh",
        SERVICE_RESULT="success",
        EXIT_CODE="exited",
        EXIT_STATUS="0",
        STUB_TAGS=tags,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("mode", ["overlayroot", "ebs"])
def test_first_boot_of_a_pool_instance_installs_then_parks(tmp_path: Path, stubs: Path, mode: str) -> None:
    first = boot(
        tmp_path, stubs, mode="prepare", role="pool", settings=make_settings(root_mode=mode), STUB_TAGS=NEVER_STARTED
    )

    assert first.returncode == 0, first.console
    assert "install_nix" in first.steps()
    assert ["systemctl", "enable", "buildkite-bootstrap.service"] in first.calls
    assert first.calls[-1] == PARK
    # Neither the reboot into the tmpfs root nor the bootstrap: both wait for the start.
    assert not (first.root / "run/buildkite-bootstrap/reboot-requested").exists()
    assert START_BOOTSTRAP not in first.calls
    unit = first.read("/etc/systemd/system/buildkite-pool-park.service")
    assert "After=cloud-final.service" in unit
    assert "ExecStart=/usr/local/sbin/buildkite-bootstrap park" in unit


@pytest.mark.parametrize(("mode", "root_type"), [("overlayroot", "overlay"), ("ebs", "ext4")])
def test_a_started_pool_instance_runs_the_per_boot_path_only(
    tmp_path: Path, stubs: Path, mode: str, root_type: str
) -> None:
    settings = make_settings(root_mode=mode)
    assert (
        boot(tmp_path, stubs, mode="prepare", role="pool", settings=settings, STUB_TAGS=NEVER_STARTED).returncode == 0
    )
    reboot(tmp_path / "root")

    started = run_script(tmp_path, stubs, "run", root_type=root_type, STUB_TAGS=STARTED)

    assert started.returncode == 0, started.console
    assert not [call for call in started.calls if call[0] in ("apt-get", "nix-installer", "unzip", "gpg")]
    assert ["systemctl", "start", "buildkite-agent.service"] in started.calls
    assert started.aws_calls()[-1][8] == "Key=buildkite-autoscaler:bootstrap,Value=complete"


@pytest.mark.parametrize(("tags", "parks"), [(NEVER_STARTED, True), (STARTED, False)], ids=["first-boot", "started"])
def test_a_baked_overlayroot_pool_instance_parks_only_on_its_first_boot(
    tmp_path: Path, stubs: Path, tags: str, parks: bool
) -> None:
    # Its tmpfs root forgets cloud-init's state: `prepare` runs again at every start.
    assert harness.bake(tmp_path, stubs, "overlayroot").returncode == 0
    install_user_data(
        tmp_path / "root", render_user_data(make_settings(root_mode="overlayroot"), X86_QUEUE, "pool", "ci-fleet")
    )
    reboot(tmp_path / "root")

    prepare = run_script(tmp_path, stubs, "prepare", root_type="overlay", STUB_TAGS=tags)

    assert prepare.returncode == 0, prepare.console
    assert (PARK in prepare.calls) is parks
    assert (START_BOOTSTRAP in prepare.calls) is not parks
    assert not [call for call in prepare.calls if call[0] in ("apt-get", "nix-installer")]


def test_a_pool_instance_without_metadata_tags_fails_rather_than_parks_forever(tmp_path: Path, stubs: Path) -> None:
    # Without them it could not tell a start from its first boot.
    result = boot(tmp_path, stubs, mode="prepare", role="pool")

    assert "FAILED step=read_pool_state" in result.console
    assert "InstanceMetadataTags=enabled" in result.console
    assert PARK not in result.calls
    assert result.calls[-1] == POWEROFF


def test_park_reads_the_volume_then_tags_pooled_then_stops_itself(tmp_path: Path, stubs: Path) -> None:
    result = run(tmp_path, stubs, "usr/local/sbin/buildkite-bootstrap", "park")

    assert result.returncode == 0, result.console
    names = [call[0] for call in result.calls]
    reads, stop = names.index("find"), result.calls.index(STOP_SELF)
    tag = next(n for n, call in enumerate(result.calls) if TAG_POOLED in call)
    assert reads < tag < stop
    assert result.calls[reads][1:3] == [f"{result.root}/", "-xdev"]
    assert POWEROFF not in result.calls
    # No agent, no secrets on a pool instance's volume.
    assert not [call for call in result.calls if call[:2] == ["aws", "ssm"]]


def test_park_that_cannot_stop_terminates_instead(tmp_path: Path, stubs: Path) -> None:
    result = run(tmp_path, stubs, "usr/local/sbin/buildkite-bootstrap", "park", STUB_FAIL="aws ec2 stop-instances\t254")

    assert "FAILED step=stop_into_pool exit=254" in result.console
    assert result.aws_calls()[-1][-1] == "Key=buildkite-autoscaler:bootstrap,Value=failed"
    assert result.calls[-1] == POWEROFF


def test_idle_pool_instance_goes_back_to_the_pool_while_it_is_short(tmp_path: Path, stubs: Path) -> None:
    result = agent_exited(
        tmp_path,
        stubs,
        STARTED + "\nbuildkite-autoscaler:on-exit=stop",
        settings=make_settings(root_mode="overlayroot"),
    )

    assert result.returncode == 0, result.console
    assert any(TAG_POOLED in call for call in result.calls)
    assert result.calls[-1] == STOP_SELF
    assert POWEROFF not in result.calls
    assert "back into the warm pool" in result.console


@pytest.mark.parametrize(
    "tags", [STARTED + "\nbuildkite-autoscaler:on-exit=terminate", STARTED], ids=["full", "untold"]
)
def test_idle_pool_instance_terminates_when_the_pool_is_full(tmp_path: Path, stubs: Path, tags: str) -> None:
    result = agent_exited(tmp_path, stubs, tags, settings=make_settings(root_mode="overlayroot"))

    assert result.returncode == 0, result.console
    assert result.calls[-1] == POWEROFF
    assert STOP_SELF not in result.calls
    assert not any(TAG_POOLED in call for call in result.calls)


def test_pool_instance_with_an_ebs_root_never_goes_back(tmp_path: Path, stubs: Path) -> None:
    # Its disk keeps what the jobs wrote: only a fresh instance may join the pool.
    result = agent_exited(
        tmp_path, stubs, STARTED + "\nbuildkite-autoscaler:on-exit=stop", settings=make_settings(root_mode="ebs")
    )

    assert result.calls[-1] == POWEROFF
    assert STOP_SELF not in result.calls


def test_burst_instance_powers_off_without_asking_for_tags(tmp_path: Path, stubs: Path) -> None:
    result = agent_exited(tmp_path, stubs, "buildkite-autoscaler:on-exit=stop", role="burst")

    assert result.calls == [POWEROFF]


def test_an_agent_killed_by_a_signal_on_a_pool_instance_is_restarted_not_pooled(tmp_path: Path, stubs: Path) -> None:
    result = run(
        tmp_path,
        stubs,
        "usr/local/lib/buildkite-bootstrap/agent-exited.sh",
        SERVICE_RESULT="success",
        EXIT_CODE="killed",
        EXIT_STATUS="TERM",
        STUB_TAGS="buildkite-autoscaler:on-exit=stop",
    )

    assert result.calls == []
