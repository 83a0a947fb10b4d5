"""A warm-pool instance's side, under the stub harness of test_bootstrap_script.

Its first boot ends stopped in the pool instead of with an agent; when its
agent exits it stops back into the pool if the scaler's on-exit tag says the
pool is short, and terminates (powers off) otherwise.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tests import test_bootstrap_script as harness
from tests.test_bootstrap_script import INSTANCE_ID, X86_QUEUE, Run, install_user_data, make_settings, read_calls

from autoscaler.config import UserDataSettings
from autoscaler.userdata import render_user_data

stubs = harness.stubs

POWEROFF = ["systemctl", "--no-block", "poweroff"]
STOP_SELF = ["aws", "ec2", "stop-instances", "--region", "us-west-2", "--instance-ids", INSTANCE_ID]
TAG_POOLED = "Key=buildkite-autoscaler:bootstrap,Value=pooled"


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
    (stubs / "find").symlink_to(stubs.parent / "stub")
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


def agent_exited(tmp_path: Path, stubs: Path, on_exit: str = "", **kwargs: object) -> Run:
    return run(
        tmp_path,
        stubs,
        "usr/local/lib/buildkite-bootstrap/agent-exited.sh",
        SERVICE_RESULT="success",
        STUB_TAG_VALUE=on_exit,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("mode", ["overlayroot", "ebs"])
def test_first_boot_of_a_pool_instance_ends_in_the_park_service(tmp_path: Path, stubs: Path, mode: str) -> None:
    result = run(
        tmp_path, stubs, "usr/local/sbin/buildkite-bootstrap", "prepare", settings=make_settings(root_mode=mode)
    )

    assert result.returncode == 0, result.console
    assert ["systemctl", "enable", "buildkite-bootstrap.service"] in result.calls
    assert result.calls[-1] == ["systemctl", "start", "--no-block", "buildkite-pool-park.service"]
    # Neither the reboot into the tmpfs root nor the bootstrap: those wait for the start.
    assert not (result.root / "run/buildkite-bootstrap/reboot-requested").exists()
    assert ["systemctl", "start", "--no-block", "buildkite-bootstrap.service"] not in result.calls
    assert (["update-initramfs", "-u"] in result.calls) is (mode == "overlayroot")
    unit = (result.root / "etc/systemd/system/buildkite-pool-park.service").read_text()
    assert "After=cloud-final.service" in unit
    assert "ExecStart=/usr/local/sbin/buildkite-bootstrap park" in unit


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
    result = agent_exited(tmp_path, stubs, on_exit="stop")

    assert result.returncode == 0, result.console
    assert any(TAG_POOLED in call for call in result.calls)
    assert result.calls[-1] == STOP_SELF
    assert POWEROFF not in result.calls
    assert "back into the warm pool" in result.console


@pytest.mark.parametrize("on_exit", ["terminate", ""], ids=["pool-full", "no-tag"])
def test_idle_pool_instance_terminates_when_the_pool_is_full(tmp_path: Path, stubs: Path, on_exit: str) -> None:
    result = agent_exited(tmp_path, stubs, on_exit=on_exit)

    assert result.returncode == 0, result.console
    assert result.calls[-1] == POWEROFF
    assert STOP_SELF not in result.calls
    assert not any(TAG_POOLED in call for call in result.calls)


def test_pool_instance_with_an_ebs_root_never_goes_back(tmp_path: Path, stubs: Path) -> None:
    # Its disk keeps what the jobs wrote: only a fresh instance may join the pool.
    result = agent_exited(tmp_path, stubs, on_exit="stop", settings=make_settings(root_mode="ebs"))

    assert result.calls[-1] == POWEROFF
    assert STOP_SELF not in result.calls


def test_burst_instance_powers_off_without_asking_for_tags(tmp_path: Path, stubs: Path) -> None:
    result = agent_exited(tmp_path, stubs, on_exit="stop", role="burst")

    assert result.calls == [POWEROFF]


def test_crashed_agent_on_a_pool_instance_is_restarted_not_pooled(tmp_path: Path, stubs: Path) -> None:
    result = run(
        tmp_path,
        stubs,
        "usr/local/lib/buildkite-bootstrap/agent-exited.sh",
        SERVICE_RESULT="exit-code",
        STUB_TAG_VALUE="stop",
    )

    assert result.calls == []
