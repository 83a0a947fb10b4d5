"""`buildkite-bootstrap plan MODE`: the steps each mode selects, printed without running any.

The plan is read off the same mode lists the bootstrap runs, with this machine's
inputs: the image marker (stock or baked), the role and the root mode. What only
a run can tell (a pool instance parks or boots on) is printed beside its step.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tests.support import instance as harness
from tests.support.instance import MARKER, X86_QUEUE, Run, boot, install_user_data, make_settings, read_calls, stub_env

from autoscaler.userdata import render_user_data

stubs = harness.stubs

STOCK_INSTALL = [
    "stop_apt_timers", "install_packages", "install_aws_cli", "install_nix", "configure_nix_cache", "install_agent",
    "configure_nix_users", "install_files",
]  # fmt: skip
START = ["load_settings", "load_instance_id", "check_arch"]
RUN = ["check_tag_permission", "read_secrets", "install_signing_key", "install_ssh_key", "write_agent_config"]
RUN += ["start_agent", "mark_complete"]
OVERLAY_RUN = ["check_root_filesystem", "apply_build_space"]
PARK_OR_BOOT = ["start_park_service [if parking]", "start_bootstrap_service [unless parking]"]

# (image, role, root mode) -> the plan of prepare
PREPARE = {
    ("stock", "burst", "ebs"): [*START, *STOCK_INSTALL, "check_no_secrets", "enable_bootstrap_service",
                                "start_bootstrap_service"],
    ("stock", "floor", "overlayroot"): [*START, *STOCK_INSTALL, "configure_overlayroot", "check_no_secrets",
                                        "enable_bootstrap_service", "request_reboot"],
    ("stock", "pool", "ebs"): [*START, "read_pool_state", *STOCK_INSTALL, "check_no_secrets",
                               "enable_bootstrap_service", *PARK_OR_BOOT],
    ("stock", "pool", "overlayroot"): [*START, "read_pool_state", *STOCK_INSTALL, "configure_overlayroot",
                                       "check_no_secrets", "enable_bootstrap_service",
                                       "start_park_service [if parking]", "request_reboot [unless parking]"],
    ("baked", "burst", "ebs"): [*START, "check_image", "install_files", "start_bootstrap_service"],
    ("baked", "floor", "overlayroot"): [*START, "check_image", "install_files", "start_bootstrap_service"],
    ("baked", "pool", "overlayroot"): [*START, "read_pool_state", "check_image", "install_files",
                                       "enable_bootstrap_service [if parking]", *PARK_OR_BOOT],
}  # fmt: skip
# Every boot, both paths, every role: only the root mode changes it.
RUN_PLAN = {"ebs": [*START, *RUN], "overlayroot": [*START, *OVERLAY_RUN, *RUN]}


def machine(tmp_path: Path, image: str, role: str, root_mode: str) -> Path:
    """An instance's disk as cloud-init leaves it: its user-data's files, and a baked image's marker."""
    root = tmp_path / "root"
    install_user_data(root, render_user_data(make_settings(root_mode=root_mode), X86_QUEUE, role, "ci-fleet"))
    if image == "baked":
        (root / "etc/buildkite-bootstrap/image").write_text(MARKER)
    return root


def plan(tmp_path: Path, stubs: Path, root: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Run]:
    log = tmp_path / "calls.log"
    env = stub_env(stubs, root, log)
    script = root / "usr/local/sbin/buildkite-bootstrap"
    result = subprocess.run(
        ["/bin/bash", str(script), "plan", *args], check=False, env=env, capture_output=True, text=True
    )
    return result, Run(result.returncode, result.stderr, read_calls(log), root)


def steps(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stdout.splitlines()[1:]


@pytest.mark.parametrize(("image", "role", "root_mode"), list(PREPARE))
def test_the_plan_of_prepare_for_each_image_role_and_root_mode(
    tmp_path: Path, stubs: Path, image: str, role: str, root_mode: str
) -> None:
    result, run = plan(tmp_path, stubs, machine(tmp_path, image, role, root_mode), "prepare")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"plan of prepare: {image} image, role {role}, root {root_mode}"
    assert steps(result) == PREPARE[image, role, root_mode]
    assert run.calls == []  # nothing ran: no command the steps use was called


@pytest.mark.parametrize("role", ["burst", "floor", "pool"])
@pytest.mark.parametrize("root_mode", ["ebs", "overlayroot"])
@pytest.mark.parametrize("image", ["stock", "baked"])
def test_the_plan_of_run_depends_on_the_root_mode_alone(
    tmp_path: Path, stubs: Path, image: str, role: str, root_mode: str
) -> None:
    result, _ = plan(tmp_path, stubs, machine(tmp_path, image, role, root_mode), "run")

    assert steps(result) == RUN_PLAN[root_mode]


def test_the_plans_of_park_release_and_the_bake(tmp_path: Path, stubs: Path) -> None:
    root = machine(tmp_path, "stock", "pool", "overlayroot")

    assert steps(plan(tmp_path, stubs, root, "park")[0]) == [
        "load_settings", "load_instance_id", "warm_volume", "stop_into_pool",
    ]  # fmt: skip
    assert steps(plan(tmp_path, stubs, root, "release")[0]) == [
        "load_settings", "check_release", "load_instance_id", "check_on_exit", "stop_into_pool",
    ]  # fmt: skip
    assert steps(plan(tmp_path, stubs, root, "bake")[0]) == [
        "load_install_settings", "load_instance_id", *STOCK_INSTALL, "configure_overlayroot", "check_no_secrets",
        "warm_nix_store", "write_image_marker", "empty_machine_id",
    ]  # fmt: skip
    assert steps(plan(tmp_path, stubs, root, "check-secrets")[0]) == ["check_no_secrets"]


@pytest.mark.parametrize(("image", "role", "root_mode"), [("stock", "burst", "ebs"), ("baked", "burst", "overlayroot")])
def test_a_run_takes_exactly_the_steps_its_plan_printed(
    tmp_path: Path, stubs: Path, image: str, role: str, root_mode: str
) -> None:
    root = machine(tmp_path, image, role, root_mode)
    printed = steps(plan(tmp_path, stubs, root, "prepare")[0])

    # A baked overlayroot image boots into the overlay.
    root_type = "overlay" if (image, root_mode) == ("baked", "overlayroot") else "ext4"
    run = boot(
        tmp_path, stubs, mode="prepare", settings=make_settings(root_mode=root_mode), role=role, root_type=root_type
    )

    assert run.returncode == 0, run.console
    assert run.steps() == printed


@pytest.mark.parametrize("args", [(), ("plan",), ("plan", "nonsense"), ("install",), ("plan", "MODE_RUN")])
def test_an_unknown_mode_is_refused_with_the_usage(tmp_path: Path, stubs: Path, args: tuple[str, ...]) -> None:
    root = machine(tmp_path, "stock", "burst", "ebs")
    env = stub_env(stubs, root, tmp_path / "calls.log")
    script = root / "usr/local/sbin/buildkite-bootstrap"

    result = subprocess.run(["/bin/bash", str(script), *args], check=False, env=env, capture_output=True, text=True)

    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert read_calls(tmp_path / "calls.log") == []


def test_a_mode_list_with_an_unknown_condition_stops_instead_of_skipping_the_step(tmp_path: Path, stubs: Path) -> None:
    root = machine(tmp_path, "stock", "burst", "ebs")
    script = root / "usr/local/sbin/buildkite-bootstrap"
    script.write_text(script.read_text().replace('"check_image baked"', '"check_image bakd"'))

    result, _ = plan(tmp_path, stubs, root, "prepare")

    assert result.returncode == 70
    assert "unknown condition bakd" in result.stderr
