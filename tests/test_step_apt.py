"""userdata/steps/apt.sh alone: the machine's apt packages and timers."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.steps import StepRun, run_step, settings

APT = ["apt-get", "systemctl", "sleep"]


def installs(run: StepRun) -> list[list[str]]:
    return [call[5:] for call in run.calls_of("apt-get")]


@pytest.mark.parametrize(("mode", "overlayroot"), [("overlayroot", True), ("ebs", False)])
def test_install_packages_adds_overlayroot_only_for_an_overlayroot_fleet(
    tmp_path: Path, mode: str, overlayroot: bool
) -> None:
    run = run_step(tmp_path, "apt", "install_packages", commands=APT, real=["grep"], env=settings(BK_ROOT_MODE=mode))

    assert run.returncode == 0, run.console
    update, install = installs(run)
    assert update == ["update"]
    assert install[:2] == ["install", "--no-install-recommends"]
    assert {"curl", "gpg", "git", "git-lfs", "jq", "sudo"} <= set(install)
    assert ("overlayroot" in install) == overlayroot


def test_install_packages_waits_for_the_dpkg_lock(tmp_path: Path) -> None:
    run = run_step(tmp_path, "apt", "install_packages", commands=APT, real=["grep"], env=settings())

    assert all(call[1:5] == ["-q", "-y", "-o", "DPkg::Lock::Timeout=600"] for call in run.calls_of("apt-get"))


def test_install_packages_installs_nothing_when_the_update_fails(tmp_path: Path) -> None:
    run = run_step(
        tmp_path,
        "apt",
        "install_packages",
        commands=APT,
        real=["grep"],
        env=settings(),
        fail={"apt-get -q -y -o DPkg::Lock::Timeout=600 update": (100, 1, "E: Failed to fetch")},
    )

    assert run.returncode == 1
    assert installs(run) == [["update"]]


def test_stop_apt_timers_disables_both_timers_now(tmp_path: Path) -> None:
    run = run_step(tmp_path, "apt", "stop_apt_timers", commands=APT)

    assert run.returncode == 0, run.console
    assert run.calls == [["systemctl", "disable", "--now", "apt-daily.timer", "apt-daily-upgrade.timer"]]
