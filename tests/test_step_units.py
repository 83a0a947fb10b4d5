"""userdata/steps/units.sh alone: units, drop-ins and hooks, and the services that carry a boot on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests.support.steps import root_of, run_step
from tests.support.userdata import REPO

INSTALLED = {
    "etc/systemd/system/buildkite-bootstrap.service": ("buildkite-bootstrap.service", 0o644),
    "etc/systemd/system/buildkite-cache-upload.service": ("buildkite-cache-upload.service", 0o644),
    "etc/systemd/system/buildkite-pool-park.service": ("buildkite-pool-park.service", 0o644),
    "etc/systemd/system/spot-interruption-watch.service": ("spot-interruption-watch.service", 0o644),
    "etc/systemd/system/buildkite-agent.service.d/environment.conf": ("agent-environment.conf", 0o644),
    "etc/systemd/system/buildkite-agent.service.d/lifecycle.conf": ("agent-lifecycle.conf", 0o644),
    "etc/buildkite-agent/hooks/environment": ("build-space-hook.sh", 0o755),
    "etc/nix/upload-to-cache.sh": ("upload-to-cache.sh", 0o755),
}


def lib_files(tmp_path: Path) -> None:
    """The user-data's files where cloud-init writes them, from the repository."""
    lib = root_of(tmp_path) / "usr/local/lib/buildkite-bootstrap"
    lib.mkdir(parents=True)
    for name, _ in INSTALLED.values():
        shutil.copy(REPO / "userdata" / name, lib / name)


def test_install_files_installs_every_unit_drop_in_and_hook(tmp_path: Path) -> None:
    lib_files(tmp_path)
    run = run_step(tmp_path, "units", "install_files", commands=["systemctl"], real=["install"])

    assert run.returncode == 0, run.console
    for path, (name, mode) in INSTALLED.items():
        assert run.read(path) == (REPO / "userdata" / name).read_text(), path
        assert run.mode(path) == mode, path
    assert run.calls == [["systemctl", "daemon-reload"]]


def test_install_files_fails_on_a_missing_file(tmp_path: Path) -> None:
    lib_files(tmp_path)
    (root_of(tmp_path) / "usr/local/lib/buildkite-bootstrap/agent-lifecycle.conf").unlink()
    run = run_step(tmp_path, "units", "install_files", commands=["systemctl"], real=["install"])

    assert run.returncode == 1
    assert run.calls == []


@pytest.mark.parametrize(
    ("function", "call"),
    [
        ("enable_bootstrap_service", ["enable", "buildkite-bootstrap.service"]),
        ("start_bootstrap_service", ["start", "--no-block", "buildkite-bootstrap.service"]),
        ("start_park_service", ["start", "--no-block", "buildkite-pool-park.service"]),
    ],
)
def test_services_carry_the_boot_on_without_waiting(tmp_path: Path, function: str, call: list[str]) -> None:
    run = run_step(tmp_path, "units", function, commands=["systemctl"])

    assert run.returncode == 0, run.console
    assert run.calls == [["systemctl", *call]]


def test_request_reboot_leaves_the_marker_cloud_init_reboots_on(tmp_path: Path) -> None:
    run = run_step(tmp_path, "units", "request_reboot", real=["touch"])

    assert run.returncode == 0, run.console
    assert run.path("/run/buildkite-bootstrap/reboot-requested").exists()
    assert run.calls == []
