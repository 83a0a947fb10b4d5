"""The instance's bootstrap, run for real under bash against a temporary root.

The files come from the rendered user-data, written where cloud-init would
write them (under BOOTSTRAP_ROOT). Commands that touch the system or the
network are stubs that log their argv; PATH holds only the stubs and a few
coreutils, so an unexpected command fails the test instead of running.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from tests.support import instance as harness
from tests.support.instance import (
    ARM_QUEUE,
    IMDS,
    INSTANCE_ID,
    MADISON,
    OVERLAYROOT,
    SIGNING_KEY,
    SSH_KEY,
    TOKEN,
    X86_QUEUE,
    Fail,
    Run,
    agent_config,
    apt_changes,
    bake,
    boot,
    downloads,
    install_user_data,
    make_settings,
    read_calls,
    reboot,
    run_script,
    stub_env,
    tags_of,
    version_tags,
)
from tests.support.userdata import REPO

from autoscaler.userdata import render_user_data

stubs = harness.stubs

# ---------------------------------------------------------------- run (every boot, both paths)


def test_agent_runs_with_the_token_from_ssm_and_the_queue_settings(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs)

    assert run.returncode == 0, run.console
    config = agent_config(run)
    assert config["token"] == f'"{TOKEN}"'
    assert config["spawn"] == "5"
    assert config["tags"] == '"nix=true,os=nixos,arch=x86_64,queue=nixos-x86-aws,fleet=ci-fleet"'
    assert config["tags-from-ec2-meta-data"] == "true"
    assert INSTANCE_ID in config["name"]
    assert config["disconnect-after-idle-timeout"] == "600"
    assert config["disconnect-after-uptime"] == "21600"
    assert ["systemctl", "start", "buildkite-agent.service"] in run.calls
    assert ["systemctl", "start", "buildkite-cache-upload.service"] in run.calls


def test_floor_agent_never_idles_out_but_still_recycles(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs, role="floor")

    assert run.returncode == 0, run.console
    config = agent_config(run)
    assert "disconnect-after-idle-timeout" not in config
    assert config["disconnect-after-uptime"] == "21600"


def test_arm_queue_boots_on_arm(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs, queue=ARM_QUEUE, machine="aarch64")

    assert run.returncode == 0, run.console
    assert "arch=arm64,queue=nixos-arm-aws" in agent_config(run)["tags"]


def test_agent_gets_the_deploy_key_and_the_uploader_the_signing_key(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs)

    assert run.returncode == 0, run.console
    key = run.root / "var/lib/buildkite-agent/.ssh/id_ed25519"
    assert key.read_text().strip() == SSH_KEY
    assert key.stat().st_mode & 0o777 == 0o600
    assert "StrictHostKeyChecking accept-new" in run.read("/var/lib/buildkite-agent/.ssh/config")
    signing = run.root / "etc/nix/cache-priv-key.pem"
    assert signing.read_text().strip() == SIGNING_KEY
    assert signing.stat().st_mode & 0o777 == 0o600


def test_instance_tags_itself_complete_last(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs)

    assert run.returncode == 0, run.console
    last = run.aws_calls()[-1]
    assert last[:5] == ["aws", "ec2", "create-tags", "--region", "us-west-2"]
    assert last[5:7] == ["--resources", INSTANCE_ID]
    assert last[7:9] == ["--tags", "Key=buildkite-autoscaler:bootstrap,Value=complete"]
    assert re.fullmatch(r"Key=buildkite-autoscaler:ready-at,Value=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", last[9])
    assert (run.root / "var/lib/buildkite-bootstrap-complete").exists()
    assert not (run.root / "run/buildkite-bootstrap").exists()


def test_versions_are_tagged_in_the_one_complete_call_the_dry_run_proved(tmp_path: Path, stubs: Path) -> None:
    assert bake(tmp_path, stubs).returncode == 0  # Nix in the default profile
    run = boot(tmp_path, stubs, STUB_AGENT_VERSION="buildkite-agent version 3.88.0-rc.1, build 6001")

    assert run.returncode == 0, run.console
    tagging = [call for call in run.aws_calls() if call[2] == "create-tags"]
    dry_run, complete = tagging
    assert "--dry-run" in dry_run
    assert tags_of(complete) == {
        "buildkite-autoscaler:bootstrap": "complete",
        "buildkite-autoscaler:ready-at": tags_of(complete)["buildkite-autoscaler:ready-at"],
        "buildkite-autoscaler:agent-version": "3.88.0-rc.1",
        "buildkite-autoscaler:nix-version": "2.31.2",
    }
    assert tags_of(dry_run).keys() == tags_of(complete).keys()


@pytest.mark.parametrize(
    ("agent", "nix", "tagged"),
    [
        (
            "buildkite-agent version 3.87.0+git(abc), build 5805",
            'nix (Nix) 2.28.3,"x"',
            ("3.87.0+git_abc_", "2.28.3__x_"),
        ),
        ("agent 4 [dev]", "", ("agent 4 _dev_", "unknown")),
        ("v" * 300, "nix (Nix) " + "9" * 300, ("v" * 256, "9" * 256)),
    ],
    ids=["odd-characters", "unparsed-and-empty", "too-long"],
)
def test_version_tags_keep_to_ec2_tag_value_rules(
    tmp_path: Path, stubs: Path, agent: str, nix: str, tagged: tuple[str, str]
) -> None:
    assert bake(tmp_path, stubs).returncode == 0
    run = boot(tmp_path, stubs, STUB_AGENT_VERSION=agent, STUB_NIX_VERSION=nix)

    assert run.returncode == 0, run.console
    assert version_tags(run) == tagged


def test_a_version_that_cannot_be_read_is_tagged_unknown_and_the_boot_completes(tmp_path: Path, stubs: Path) -> None:
    # No Nix in the default profile (nothing installed it), and the agent's --version fails.
    run = boot(tmp_path, stubs, fail={"buildkite-agent --version": 127})

    assert run.returncode == 0, run.console
    assert "FAILED" not in run.console
    assert run.aws_calls()[-1][8] == "Key=buildkite-autoscaler:bootstrap,Value=complete"
    assert version_tags(run) == ("unknown", "unknown")
    assert (run.root / "var/lib/buildkite-bootstrap-complete").exists()


def test_secrets_are_never_on_a_command_line_or_the_console(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs)

    assert run.returncode == 0, run.console
    fragments = ("FAKE_TOKEN", "FAKE-SSH-KEY", "FAKE-SIGNING-KEY", "imds-session-token")
    for fragment in fragments:
        assert not [call for call in run.calls if fragment in " ".join(call)], fragment
        assert fragment not in run.console


@pytest.mark.parametrize(
    ("fail", "machine", "step", "code"),
    [
        ({"curl -q -fsS --retry 5 --retry-connrefused --max-time 5 -X PUT": 7}, "x86_64", "load_instance_id", 7),
        ({}, "aarch64", "check_arch", 1),
        ({"aws ec2 create-tags --dry-run": (254, 1, "An error occurred (UnauthorizedOperation)")}, "x86_64",
         "check_tag_permission", 1),
        ({"aws ssm get-parameter": 254}, "x86_64", "read_secrets", 254),
        ({"chown": 1}, "x86_64", "install_ssh_key", 1),
        ({"chgrp": 1}, "x86_64", "write_agent_config", 1),
        ({"systemctl start buildkite-cache-upload": 1}, "x86_64", "start_agent", 1),
        ({"systemctl is-active": 3}, "x86_64", "start_agent", 1),
        ({"aws ec2 create-tags --region us-west-2 --resources i-0abc123def4567890 --tags Key=buildkite-autoscaler"
          ":bootstrap,Value=complete": 254}, "x86_64", "mark_complete", 1),
    ],
    ids=["imds", "arch-mismatch", "tag-refused", "ssm-read", "ssh-key", "agent-config", "uploader", "agent-down",
         "complete-refused"],
)  # fmt: skip
def test_failed_step_tags_failed_and_powers_off(
    tmp_path: Path, stubs: Path, fail: dict[str, Fail], machine: str, step: str, code: int
) -> None:
    run = boot(tmp_path, stubs, fail=fail, machine=machine)

    assert run.returncode == code
    assert f"FAILED step={step} exit={code}" in run.console
    if step != "load_instance_id":  # without its id the instance cannot tag itself
        assert run.aws_calls()[-1][-1] == "Key=buildkite-autoscaler:bootstrap,Value=failed"
    assert run.calls[-1] == ["systemctl", "--no-block", "poweroff"]
    assert run.console.count("FAILED") == 1
    assert run.calls.count(["systemctl", "--no-block", "poweroff"]) == 1
    assert run.steps()[-1] == step
    assert not (run.root / "var/lib/buildkite-bootstrap-complete").exists()
    if step != "mark_complete":
        assert not any("Value=complete" in " ".join(call) for call in run.calls if "--dry-run" not in call)


def test_refused_tag_permission_is_named_and_no_job_is_ever_taken(tmp_path: Path, stubs: Path) -> None:
    refused = "An error occurred (UnauthorizedOperation) when calling the CreateTags operation"
    run = boot(tmp_path, stubs, fail={"aws ec2 create-tags": (254, 9, refused)})

    assert f"REFUSED: ec2:CreateTags on {INSTANCE_ID}" in run.console
    assert refused in run.console
    assert not [call for call in run.calls if call[:2] == ["systemctl", "start"]]
    assert not [call for call in run.calls if call[:2] == ["aws", "ssm"]]
    assert run.calls[-1] == ["systemctl", "--no-block", "poweroff"]


def test_the_failure_line_says_why_and_is_the_last_before_the_power_off(tmp_path: Path, stubs: Path) -> None:
    refused = "An error occurred (UnauthorizedOperation) when calling the CreateTags operation"
    run = boot(tmp_path, stubs, fail={"aws ec2 create-tags": (254, 9, refused)})

    *_, failure, power_off = run.console.rstrip("\n").split("\n")
    assert failure.startswith("buildkite-bootstrap: FAILED step=check_tag_permission exit=1: REFUSED: ec2:CreateTags")
    assert power_off == "buildkite-bootstrap: powering off"


NO_ENDPOINT = 'Could not connect to the endpoint URL: "https://ec2.us-west-2.amazonaws.com/"'


def test_ec2_out_of_reach_is_retried_and_fails_as_itself_not_as_a_refusal(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs, fail={"aws ec2 create-tags --dry-run": (255, 9, NO_ENDPOINT)})

    assert run.returncode == 1
    assert "REFUSED" not in run.console
    assert f"FAILED step=check_tag_permission exit=1: could not check ec2:CreateTags on {INSTANCE_ID}: " in run.console
    assert NO_ENDPOINT in run.console.split("FAILED")[1]
    assert len([call for call in run.aws_calls() if "--dry-run" in call]) == 3
    assert run.calls[-1] == ["systemctl", "--no-block", "poweroff"]


def test_ec2_back_within_the_retries_lets_the_boot_complete(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs, fail={"aws ec2 create-tags --dry-run": (255, 2, NO_ENDPOINT)})

    assert run.returncode == 0, run.console
    assert "FAILED" not in run.console
    assert run.aws_calls()[-1][8] == "Key=buildkite-autoscaler:bootstrap,Value=complete"


def test_a_complete_tag_ec2_did_not_take_is_named_as_what_it_was_not_as_a_refusal(tmp_path: Path, stubs: Path) -> None:
    fail: dict[str, Fail] = {"aws ec2 create-tags --region": (255, 9, NO_ENDPOINT)}
    run = boot(tmp_path, stubs, fail=fail)

    assert run.returncode == 1
    assert "REFUSED" not in run.console
    assert f"FAILED step=mark_complete exit=1: could not tag {INSTANCE_ID} buildkite-autoscaler:bootstrap=complete" in (
        run.console
    )


def retired(root: Path) -> None:
    """What agent-exited.sh leaves when the agent exits 0."""
    (root / "run").mkdir(parents=True, exist_ok=True)
    (root / "run/buildkite-agent-retired").touch()


def test_an_agent_that_retires_during_its_start_checks_is_no_failure(tmp_path: Path, stubs: Path) -> None:
    # The build-space hook drained it on its first job: it exited 0, and agent-exited.sh
    # left its mark and powers off.
    retired(tmp_path / "root")
    run = boot(tmp_path, stubs, fail={"systemctl is-active": 3})

    assert run.returncode == 0, run.console
    assert "FAILED" not in run.console
    assert "buildkite-agent exited 0 during step start_agent: it retired" in run.console
    assert not [call for call in run.aws_calls() if "Value=failed" in call]
    assert ["systemctl", "--no-block", "poweroff"] not in run.calls
    assert not (run.root / "var/lib/buildkite-bootstrap-complete").exists()


def test_the_power_off_of_a_retired_agent_stopping_the_bootstrap_is_no_failure(tmp_path: Path, stubs: Path) -> None:
    # agent-exited.sh's power-off stops the bootstrap service (SIGTERM) in the middle of its checks.
    retired(tmp_path / "root")
    run = boot(tmp_path, stubs, term_from="sleep")

    assert run.returncode == 0, run.console
    assert "FAILED" not in run.console
    assert not [call for call in run.aws_calls() if "Value=failed" in call]


def test_an_agent_that_crashes_during_its_start_checks_fails_the_bootstrap(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs, fail={"systemctl is-active": 3})

    assert run.returncode == 1
    assert "FAILED step=start_agent exit=1: buildkite-agent is not running (check 1 of 4)" in run.console
    assert run.aws_calls()[-1][-1] == "Key=buildkite-autoscaler:bootstrap,Value=failed"


def test_bootstrap_stopped_by_its_timeout_reports_the_step_and_powers_off(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs, term_from="sleep")

    assert run.returncode == 143
    assert "FAILED step=start_agent exit=143" in run.console
    assert run.aws_calls()[-1][-1] == "Key=buildkite-autoscaler:bootstrap,Value=failed"
    assert run.calls[-1] == ["systemctl", "--no-block", "poweroff"]


def test_overlayroot_instance_refuses_to_bootstrap_on_the_disk_root(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs, settings=OVERLAYROOT, root_type="ext4")

    assert "FAILED step=check_root_filesystem exit=1" in run.console
    assert run.calls[-1] == ["systemctl", "--no-block", "poweroff"]
    assert not [call for call in run.calls if call[:2] == ["aws", "ssm"]]


@pytest.mark.parametrize("size", ["75%", "90%", "48g"])
def test_overlayroot_build_space_is_the_configured_size(tmp_path: Path, stubs: Path, size: str) -> None:
    run = boot(tmp_path, stubs, settings=make_settings(root_mode="overlayroot", root_tmpfs_size=size))

    assert run.returncode == 0, run.console
    remount = ["mount", "-o", f"remount,size={size}", f"{run.root}/media/root-rw"]
    assert remount in run.calls
    # Before any job can write to it.
    assert run.calls.index(remount) < run.calls.index(["systemctl", "start", "buildkite-agent.service"])
    assert f"build space on the overlayroot tmpfs (size={size})" in run.console


def test_ebs_root_is_left_as_it_is(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs)

    assert run.returncode == 0, run.console
    assert not [call for call in run.calls if call[0] == "mount"]


# ---------------------------------------------------------------- install (stock boot and image bake)


def test_stock_boot_installs_nix_pinned_with_the_s3_cache_and_no_root_for_jobs(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs, mode="prepare")

    assert run.returncode == 0, run.console
    fetch = next(url for url in downloads(run) if "install.determinate.systems" in url)
    assert fetch == "https://install.determinate.systems/nix/tag/v3.21.2"
    installer = next(call for call in run.calls if call[0] == "nix-installer")
    assert installer[1:] == [
        "install",
        "linux",
        "--no-confirm",
        "--determinate",
        "--extra-conf",
        "trusted-users = root ubuntu",
    ]
    # The cache's configuration, line by line: tests/test_step_nix.py.
    conf = run.read("/etc/nix/nix.custom.conf")
    assert "extra-substituters = s3://fleet-nix-cache?region=eu-central-1\n" in conf
    assert "accept-flake-config" not in conf
    assert ["systemctl", "restart", "nix-daemon.service"] in run.calls
    assert not (run.root / "etc/nix/cache-priv-key.pem").exists()


@pytest.mark.parametrize(
    ("changes", "flavour"),
    [({"nix_determinate": False}, "--prefer-upstream-nix"), ({"nix_installer_version": "v3.13.2"}, "--determinate")],
)
def test_nix_flavour_and_installer_version_are_settings(
    tmp_path: Path, stubs: Path, changes: dict[str, object], flavour: str
) -> None:
    settings = make_settings(**changes)
    run = boot(tmp_path, stubs, mode="prepare", settings=settings)

    assert run.returncode == 0, run.console
    installer = next(call for call in run.calls if call[0] == "nix-installer")
    assert installer[4] == flavour
    assert {"--determinate", "--prefer-upstream-nix"} & set(installer) == {flavour}
    assert f"https://install.determinate.systems/nix/tag/{settings.nix_installer_version}" in downloads(run)


def test_jobs_become_trusted_nix_users_only_by_explicit_opt_in(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs, mode="prepare", settings=make_settings(nix_trust_jobs=True))

    assert run.returncode == 0, run.console
    installer = next(call for call in run.calls if call[0] == "nix-installer")
    assert installer[-1] == "trusted-users = root ubuntu buildkite-agent @nix-users"
    assert "accept-flake-config = true\n" in run.read("/etc/nix/nix.custom.conf")


def test_stock_boot_installs_the_packages_itself_and_the_pinned_agent(tmp_path: Path, stubs: Path) -> None:
    madison = (
        " buildkite-agent | 3.88.1-5900 | https://apt.buildkite.com/buildkite-agent stable/main amd64 Packages\n"
        " buildkite-agent | 3.87.0-5805 | https://apt.buildkite.com/buildkite-agent stable/main amd64 Packages"
    )
    run = boot(tmp_path, stubs, mode="prepare", settings=make_settings(agent_version="3.87.0"), madison=madison)

    assert run.returncode == 0, run.console
    installs = [call for call in run.calls if call[0] == "apt-get" and "install" in call]
    packages = "curl ca-certificates gpg dbus jq yq git git-lfs git-filter-repo pciutils openssl unzip sudo"
    assert installs[0][-len(packages.split()) :] == packages.split()
    assert installs[-1][-1] == "buildkite-agent=3.87.0-5805"
    assert ["systemctl", "disable", "--now", "apt-daily.timer", "apt-daily-upgrade.timer"] in run.calls
    # The package's unit must not start the agent before `run` wrote its config.
    assert ["systemctl", "disable", "--now", "buildkite-agent.service"] in run.calls
    assert ["usermod", "-aG", "nix-users", "buildkite-agent"] in run.calls
    assert ["chgrp", "nix-users", f"{run.root}/nix/var/nix/daemon-socket"] in run.calls
    environment = run.read("/etc/systemd/system/buildkite-agent.service.d/environment.conf")
    assert "Environment=PATH=/nix/var/nix/profiles/default/bin:" in environment
    lifecycle = run.read("/etc/systemd/system/buildkite-agent.service.d/lifecycle.conf")
    assert "ExecStopPost=+/usr/local/lib/buildkite-bootstrap/agent-exited.sh" in lifecycle
    assert (run.root / "etc/buildkite-agent/hooks/environment").stat().st_mode & 0o111


def test_by_default_the_stock_boot_installs_the_newest_agent_of_major_3_not_4(tmp_path: Path, stubs: Path) -> None:
    madison = "\n".join(
        f" buildkite-agent | {version} | https://apt.buildkite.com/buildkite-agent stable/main amd64 Packages"
        for version in ("4.0.2-7001", "4.0.0-6990", "3.138.0-6100", "3.137.1-6050", "33.0.0-1")
    )
    run = boot(tmp_path, stubs, mode="prepare", madison=madison)

    assert run.returncode == 0, run.console
    installs = [call for call in run.calls if call[0] == "apt-get" and "install" in call]
    assert installs[-1][-1] == "buildkite-agent=3.138.0-6100"


V3_OPTIONS = REPO / "tests/data/buildkite-agent-v3-start-options.txt"


@pytest.mark.parametrize("role", ["burst", "floor", "pool"])
def test_the_agent_config_holds_only_keys_agent_3_documents(tmp_path: Path, stubs: Path, role: str) -> None:
    documented = {line for line in V3_OPTIONS.read_text().splitlines() if line and not line.startswith("#")}
    run = boot(tmp_path, stubs, role=role, STUB_TAGS="buildkite-autoscaler:started-at=2026-12-05T05:00:00Z")

    assert run.returncode == 0, run.console
    assert set(agent_config(run)) <= documented
    assert {"token", "spawn", "tags", "disconnect-after-uptime"} <= set(agent_config(run))


@pytest.mark.parametrize("mode", ["prepare", "bake"])
def test_apt_never_waits_for_needrestart_nor_lets_it_restart_services(tmp_path: Path, stubs: Path, mode: str) -> None:
    # Ubuntu 24.04's needrestart hook runs after each apt-get; DEBIAN_FRONTEND does not cover it.
    run = boot(tmp_path, stubs, mode="prepare") if mode == "prepare" else bake(tmp_path, stubs)

    assert run.returncode == 0, run.console
    environments = (tmp_path / f"calls-{mode}.log.apt-env").read_text().splitlines()
    assert len(environments) == len([call for call in run.calls if call[0] == "apt-get"]) >= 3
    assert set(environments) == {"NEEDRESTART_SUSPEND=1 NEEDRESTART_MODE=l"}


def test_apt_is_retried_while_another_apt_holds_the_lists_lock(tmp_path: Path, stubs: Path) -> None:
    lock = "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 1234 (apt-get)"
    run = boot(
        tmp_path, stubs, mode="prepare", fail={"apt-get -q -y -o DPkg::Lock::Timeout=600 update": (100, 2, lock)}
    )

    assert run.returncode == 0, run.console
    updates = [call for call in run.calls if call[0] == "apt-get" and call[-1] == "update"]
    assert len(updates) == 4  # two refused, then the packages' and the agent repository's
    assert run.console.count("another apt holds a lock") == 2


def test_apt_fails_at_once_on_other_errors(tmp_path: Path, stubs: Path) -> None:
    run = boot(
        tmp_path,
        stubs,
        mode="prepare",
        fail={"apt-get -q -y -o DPkg::Lock::Timeout=600 update": (100, 9, "E: mirror down")},
    )

    assert "FAILED step=install_packages exit=1" in run.console
    assert len([call for call in run.calls if call[0] == "apt-get"]) == 1
    assert run.calls[-1] == ["systemctl", "--no-block", "poweroff"]


def test_aws_cli_is_unpacked_where_execution_is_allowed(tmp_path: Path, stubs: Path) -> None:
    (stubs / "aws").unlink()

    run = boot(tmp_path, stubs, mode="prepare", machine="aarch64", queue=ARM_QUEUE)

    assert run.returncode == 0, run.console
    assert "https://awscli.amazonaws.com/awscli-exe-linux-aarch64.zip" in downloads(run)
    unzip = next(call for call in run.calls if call[0] == "unzip")
    target = Path(unzip[unzip.index("-d") + 1])
    # /run is mounted noexec when the boot went through the initramfs.
    assert not target.is_relative_to(run.root / "run")
    assert target.is_relative_to(run.root / "var/tmp")
    installer = next(call for call in run.calls if call[0] == "aws-installer")
    assert installer[1:] == [
        "--update",
        "--install-dir",
        f"{run.root}/usr/local/aws-cli",
        "--bin-dir",
        f"{run.root}/usr/local/bin",
    ]
    assert not target.exists()


def test_stock_overlayroot_installs_then_reboots_into_the_tmpfs_root(tmp_path: Path, stubs: Path) -> None:
    grub = tmp_path / "root/etc/default/grub.d/40-force-partuuid.cfg"
    grub.parent.mkdir(parents=True)
    grub.write_text("GRUB_FORCE_PARTUUID=1234-abcd\n")

    run = boot(tmp_path, stubs, mode="prepare", settings=OVERLAYROOT)

    assert run.returncode == 0, run.console
    assert run.read("/etc/overlayroot.local.conf") == 'overlayroot="tmpfs"\n'
    assert grub.read_text() == "#GRUB_FORCE_PARTUUID=1234-abcd\n"
    assert ["update-grub"] in run.calls
    assert ["update-initramfs", "-u"] in run.calls
    assert "overlayroot" in next(call for call in run.calls if call[0] == "apt-get" and "install" in call)
    assert ["systemctl", "enable", "buildkite-bootstrap.service"] in run.calls
    assert (run.root / "run/buildkite-bootstrap/reboot-requested").exists()
    assert not [call for call in run.calls if call[:2] == ["systemctl", "start"]]

    reboot(run.root)
    second = run_script(tmp_path, stubs, "run", root_type="overlay")

    assert second.returncode == 0, second.console
    assert second.aws_calls()[-1][8] == "Key=buildkite-autoscaler:bootstrap,Value=complete"
    assert ["mount", "-o", "remount,size=75%", f"{run.root}/media/root-rw"] in second.calls
    assert not apt_changes(second)
    assert not downloads(second)


def test_stock_ebs_installs_then_starts_the_bootstrap_without_reboot(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs, mode="prepare")

    assert run.returncode == 0, run.console
    assert run.steps()[-2:] == ["enable_bootstrap_service", "start_bootstrap_service"]
    assert ["systemctl", "start", "--no-block", "buildkite-bootstrap.service"] in run.calls
    assert not (run.root / "run/buildkite-bootstrap/reboot-requested").exists()
    assert not (run.root / "etc/overlayroot.local.conf").exists()
    assert not [call for call in run.calls if call[0] in ("update-grub", "update-initramfs")]

    second = run_script(tmp_path, stubs, "run")

    assert second.returncode == 0, second.console
    assert second.aws_calls()[-1][8] == "Key=buildkite-autoscaler:bootstrap,Value=complete"
    assert version_tags(second) == ("3.87.0", "2.31.2")


def test_prepare_on_the_wrong_architecture_powers_off_instead_of_installing(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs, mode="prepare", machine="aarch64", settings=OVERLAYROOT)

    assert "FAILED step=check_arch exit=1" in run.console
    assert run.calls[-1] == ["systemctl", "--no-block", "poweroff"]
    assert not apt_changes(run)
    assert not (run.root / "run/buildkite-bootstrap/reboot-requested").exists()


def test_stock_install_failure_tags_failed_and_powers_off(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs, mode="prepare", fail={"nix-installer": 1})

    assert "FAILED step=install_nix exit=1" in run.console
    assert run.aws_calls()[-1][-1] == "Key=buildkite-autoscaler:bootstrap,Value=failed"
    assert run.calls[-1] == ["systemctl", "--no-block", "poweroff"]
    assert not [call for call in run.calls if call[0] in ("usermod", "update-grub")]


# ---------------------------------------------------------------- the image bake and the baked boot


@pytest.mark.parametrize("mode", ["ebs", "overlayroot"])
def test_bake_and_stock_boot_run_the_same_install(tmp_path: Path, stubs: Path, mode: str) -> None:
    baked = bake(tmp_path / "bake", stubs, mode)
    (stubs / "aws").unlink()  # the stock AMI has no AWS CLI either
    stock = boot(
        tmp_path / "stock",
        stubs,
        mode="prepare",
        settings=make_settings(root_mode=mode, agent_version="3.87.0"),
        madison=MADISON,
    )

    assert baked.returncode == 0, baked.console
    assert stock.returncode == 0, stock.console
    # The bake: its settings and instance id, the install, then the image's own steps.
    install_steps = baked.steps()[2:-3]
    assert baked.steps()[-3:] == ["warm_nix_store", "write_image_marker", "empty_machine_id"]
    assert stock.steps()[3 : 3 + len(install_steps)] == install_steps

    def commands(run: Run) -> list[str]:
        relevant = [call for call in run.calls if not (call[0] == "curl" and call[-1].startswith(IMDS))]
        return [" ".join(call).replace(str(run.root), "<root>") for call in relevant if call[0] != "uname"]

    # Without what the image's own steps run: the versions, its tag, the warm store.
    baked_commands = [c for c in commands(baked) if c.split()[0] not in ("aws", "nix", "buildkite-agent")]
    stock_commands = commands(stock)
    first = stock_commands.index(baked_commands[0])
    # Sorted: the commands of a pipeline run side by side, in any order.
    assert sorted(stock_commands[first : first + len(baked_commands)]) == sorted(baked_commands)


def test_bake_leaves_no_secret_and_touches_no_instance(tmp_path: Path, stubs: Path) -> None:
    run = bake(tmp_path, stubs, "overlayroot")

    assert run.returncode == 0, run.console
    # It reads its own tags (the image build's ARN) and writes none; it never powers off.
    assert [call[:3] for call in run.calls if call[0] == "aws"] == [["aws", "ec2", "describe-tags"]]
    assert not [call for call in run.calls if "poweroff" in call]
    assert not (run.root / "etc/nix/cache-priv-key.pem").exists()
    assert not (run.root / "var/lib/buildkite-bootstrap-complete").exists()


@pytest.mark.parametrize(
    "secret",
    ["etc/nix/cache-priv-key.pem", "var/lib/buildkite-agent/.ssh/id_ed25519", "run/buildkite-bootstrap/agent-token",
     "var/lib/buildkite-bootstrap-complete", "etc/buildkite-agent/buildkite-agent.cfg"],
)  # fmt: skip
def test_bake_refuses_a_disk_with_a_secret_on_it(tmp_path: Path, stubs: Path, secret: str) -> None:
    path = tmp_path / "root" / secret
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('token="bkct_leaked"\n' if secret.endswith(".cfg") else "secret\n")

    run = bake(tmp_path, stubs)

    assert run.returncode == 1
    assert "FAILED step=check_no_secrets" in run.console
    assert str(path) in run.console
    assert not (run.root / "etc/buildkite-bootstrap/image").exists()
    assert not [call for call in run.calls if "poweroff" in call]


def test_bake_accepts_the_agent_packages_placeholder_config(tmp_path: Path, stubs: Path) -> None:
    config = tmp_path / "root/etc/buildkite-agent/buildkite-agent.cfg"
    config.parent.mkdir(parents=True)
    config.write_text('token="xxx"\nname="%hostname-%spawn"\n')

    assert bake(tmp_path, stubs).returncode == 0


def baked_boot(tmp_path: Path, stubs: Path, mode: str = "ebs", **options: object) -> tuple[Run, Run]:
    """A bake, then a launch of the image: cloud-init's user-data, `prepare`, the service's `run`."""
    assert bake(tmp_path, stubs, mode).returncode == 0
    settings = make_settings(root_mode=mode)
    install_user_data(tmp_path / "root", render_user_data(settings, X86_QUEUE, "burst", "ci-fleet"))
    reboot(tmp_path / "root")
    root_type = "overlay" if mode == "overlayroot" else "ext4"
    prepare = run_script(tmp_path, stubs, "prepare", root_type=root_type, **options)  # type: ignore[arg-type]
    if prepare.returncode != 0:
        return prepare, prepare
    return prepare, run_script(tmp_path, stubs, "run", root_type=root_type, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["ebs", "overlayroot"])
def test_baked_boot_installs_downloads_and_reboots_nothing(tmp_path: Path, stubs: Path, mode: str) -> None:
    prepare, run = baked_boot(tmp_path, stubs, mode)

    assert prepare.returncode == 0, prepare.console
    assert run.returncode == 0, run.console
    calls = prepare.calls + run.calls
    assert [call for call in calls if call[0] == "apt-get"] == []
    assert [call for call in calls if call[0] in ("nix-installer", "unzip", "aws-installer", "gpg")] == []
    urls = [call[-1] for call in calls if call[0] == "curl"]
    assert urls
    assert all(url.startswith(IMDS) for url in urls)
    services = {tuple(call[:3]) for call in calls if call[0] == "aws"}
    assert services == {("aws", "ec2", "create-tags"), ("aws", "ssm", "get-parameter")}
    assert not [call for call in calls if call[0] in ("update-grub", "update-initramfs", "reboot")]
    assert not (run.root / "run/buildkite-bootstrap/reboot-requested").exists()
    assert f"baked image 1.0.0/7: buildkite-agent 3.87.0, nix 2.31.2, root {mode}" in prepare.console
    steps = "load_settings load_instance_id check_arch check_image install_files start_bootstrap_service"
    assert prepare.steps() == steps.split()
    assert ["systemctl", "start", "buildkite-agent.service"] in run.calls
    assert run.aws_calls()[-1][8] == "Key=buildkite-autoscaler:bootstrap,Value=complete"
    assert version_tags(run) == ("3.87.0", "2.31.2")


@pytest.mark.parametrize(
    ("baked", "fleet", "root_type"), [("overlayroot", "ebs", "overlay"), ("ebs", "overlayroot", "ext4")]
)
def test_baked_image_of_another_root_mode_fails_loudly(
    tmp_path: Path, stubs: Path, baked: str, fleet: str, root_type: str
) -> None:
    assert bake(tmp_path, stubs, baked).returncode == 0
    settings = make_settings(root_mode=fleet)
    install_user_data(tmp_path / "root", render_user_data(settings, X86_QUEUE, "burst", "ci-fleet"))

    run = run_script(tmp_path, stubs, "prepare", root_type=root_type)

    assert f"this image boots with root mode {baked} but the fleet runs {fleet}" in run.console
    assert "FAILED step=check_image" in run.console
    assert run.aws_calls()[-1][-1] == "Key=buildkite-autoscaler:bootstrap,Value=failed"
    assert run.calls[-1] == ["systemctl", "--no-block", "poweroff"]


@pytest.mark.parametrize(
    ("options", "step"),
    [
        ({"machine": "aarch64"}, "check_arch"),
        ({"fail": {"systemctl daemon-reload": 1}}, "install_files"),
        ({"fail": {"systemctl start --no-block": 1}}, "start_bootstrap_service"),
        ({"fail": {"aws ssm get-parameter": 254}}, "read_secrets"),
        ({"fail": {"systemctl is-active": 3}}, "start_agent"),
    ],
    ids=["arch", "files", "service", "ssm", "agent"],
)
def test_baked_boot_failure_at_any_step_tags_failed_and_powers_off(
    tmp_path: Path, stubs: Path, options: dict[str, object], step: str
) -> None:
    _, run = baked_boot(tmp_path, stubs, **options)

    assert f"FAILED step={step}" in run.console
    assert run.aws_calls()[-1][-1] == "Key=buildkite-autoscaler:bootstrap,Value=failed"
    assert run.calls[-1] == ["systemctl", "--no-block", "poweroff"]


# ---------------------------------------------------------------- the agent's exit, its hook, the cache upload


@pytest.mark.parametrize(
    ("result", "exit_code", "exit_status", "powers_off"),
    [
        ("success", "exited", "0", True),
        ("exit-code", "exited", "1", False),
        ("success", "killed", "PIPE", False),
        ("success", "killed", "TERM", False),
        ("success", "killed", "HUP", False),
        ("signal", "killed", "KILL", False),
        ("core-dump", "dumped", "SEGV", False),
    ],
)
def test_instance_powers_off_only_when_the_agent_exits_0(
    tmp_path: Path, stubs: Path, result: str, exit_code: str, exit_status: str, powers_off: bool
) -> None:
    install_user_data(tmp_path, render_user_data(make_settings(), X86_QUEUE, "burst", "ci-fleet"))
    log = tmp_path / "exit.log"
    env = stub_env(stubs, tmp_path, log, SERVICE_RESULT=result, EXIT_CODE=exit_code, EXIT_STATUS=exit_status)
    script = tmp_path / "usr/local/lib/buildkite-bootstrap/agent-exited.sh"
    subprocess.run(["/bin/bash", str(script)], env=env, check=True, capture_output=True)

    assert (["systemctl", "--no-block", "poweroff"] in read_calls(log)) is powers_off
    # The bootstrap's sign that a power-off stopping it is a retirement, not a failure.
    assert (tmp_path / "run/buildkite-agent-retired").exists() is powers_off


def plant_in_home(home: Path) -> tuple[Path, Path]:
    """What a job can write in the agent's home: an AWS config whose credential_process
    and a .curlrc whose options would run as root. Returns the files they would create."""
    ran, fetched = home.parent / "credential-process-ran", home.parent / "curlrc-applied"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws/config").write_text(f"[default]\ncredential_process = touch {ran}\n")
    (home / ".curlrc").write_text(f"output = {fetched}\n")
    return ran, fetched


def test_a_job_planted_aws_config_or_curlrc_never_runs_as_root_when_the_agent_exits(
    tmp_path: Path, stubs: Path
) -> None:
    # ExecStopPost=+ runs agent-exited.sh as root with the agent unit's HOME; a pool
    # instance's release then calls the instance metadata and EC2.
    ran, fetched = plant_in_home(tmp_path / "var/lib/buildkite-agent")
    settings = make_settings(root_mode="overlayroot")
    install_user_data(tmp_path, render_user_data(settings, X86_QUEUE, "pool", "ci-fleet"))
    log = tmp_path / "exit.log"
    env = stub_env(stubs, tmp_path, log, STUB_TAGS="buildkite-autoscaler:on-exit=stop", EXIT_CODE="exited")
    env |= {"HOME": str(tmp_path / "var/lib/buildkite-agent"), "EXIT_STATUS": "0", "SERVICE_RESULT": "success"}
    script = tmp_path / "usr/local/lib/buildkite-bootstrap/agent-exited.sh"
    result = subprocess.run(["/bin/bash", str(script)], env=env, check=False, capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert ["aws", "ec2", "stop-instances", "--region", "us-west-2", "--instance-ids", INSTANCE_ID] in read_calls(log)
    assert not ran.exists()
    assert not fetched.exists()


def test_a_job_planted_aws_config_never_runs_as_root_in_the_cache_upload(instance: Path, stubs: Path) -> None:
    ran, _ = plant_in_home(instance / "var/lib/buildkite-agent")
    queue_build(instance, stubs, "/nix/store/aaa-x")

    result, _ = drain(instance, stubs, 60, HOME=str(instance / "var/lib/buildkite-agent"))

    assert result.returncode == 0
    assert read_calls(instance / "upload.log")[-1][:2] == ["nix", "copy"]
    assert not ran.exists()


def test_power_off_after_the_agent_exits_runs_as_root_not_as_the_agents_user() -> None:
    # Buildkite's unit runs as User=buildkite-agent, and ExecStopPost inherits it: logind
    # refuses that user a poweroff (no session, no polkit grant), so the instance would
    # stay up without an agent. systemd's "+" prefix runs the command with full privileges.
    lifecycle = (REPO / "userdata/agent-lifecycle.conf").read_text()
    stop_post = [line for line in lifecycle.splitlines() if line.startswith("ExecStopPost=")]

    assert stop_post == ["ExecStopPost=+/usr/local/lib/buildkite-bootstrap/agent-exited.sh"]


def test_agent_restarts_after_signal_deaths_systemd_calls_clean() -> None:
    lifecycle = (REPO / "userdata/agent-lifecycle.conf").read_text()

    # All four: the package's unit (TimeoutStopSec=0, KillMode=process) lists SIGPIPE only.
    assert "RestartForceExitStatus=SIGHUP SIGINT SIGTERM SIGPIPE\n" in lifecycle


DRAIN = ["systemctl", "kill", "--kill-whom=main", "--signal=SIGTERM", "buildkite-agent.service"]


def run_hook(tmp_path: Path, stubs: Path, avail_kib: int) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    install_user_data(tmp_path, render_user_data(make_settings(min_free_space_gib=5), X86_QUEUE, "burst", "ci-fleet"))
    log = tmp_path / "hook.log"
    env = stub_env(stubs, tmp_path, log, STUB_DF_AVAIL_KIB=str(avail_kib), BUILDKITE_AGENT_PID="999999")
    env["BUILDKITE_AGENT_NAME"] = "nixos-x86-aws-i-0abc-1"
    hook = tmp_path / "usr/local/lib/buildkite-bootstrap/build-space-hook.sh"
    # The agent sources its hooks from a bash wrapper.
    result = subprocess.run(
        ["/bin/bash", "-c", f'. "{hook}"; echo job-continues'], env=env, check=False, capture_output=True, text=True
    )
    return result, read_calls(log)


def test_job_runs_when_there_is_build_space(tmp_path: Path, stubs: Path) -> None:
    result, calls = run_hook(tmp_path, stubs, avail_kib=6 * 1024 * 1024)

    assert result.returncode == 0
    assert "job-continues" in result.stdout
    assert not [call for call in calls if call[0] == "logger"]


def test_job_fails_early_and_the_instance_retires_when_build_space_is_nearly_full(tmp_path: Path, stubs: Path) -> None:
    result, calls = run_hook(tmp_path, stubs, avail_kib=4 * 1024 * 1024)

    assert result.returncode == 75
    assert "job-continues" not in result.stdout
    assert "build space nearly full on nixos-x86-aws-i-0abc-1: 4096 MiB free, below the 5 GiB minimum" in result.stdout
    assert "takes no more jobs and retires" in result.stdout
    logged = next(call for call in calls if call[0] == "logger")
    assert logged[1:3] == ["-t", "buildkite-build-space"]
    assert "retiring the instance" in logged[3]
    assert [call for call in calls if call[:2] == ["systemctl", "kill"]] == [DRAIN]


def test_the_agent_is_drained_once_however_many_jobs_the_hook_refuses(tmp_path: Path, stubs: Path) -> None:
    # A second SIGTERM would cancel the agent's other running jobs, a third kill it.
    runs = [run_hook(tmp_path, stubs, avail_kib=1024) for _ in range(3)]

    assert [result.returncode for result, _ in runs] == [75, 75, 75]
    calls = read_calls(tmp_path / "hook.log")
    assert [call for call in calls if call[:2] == ["systemctl", "kill"]] == [DRAIN]
    assert "no second SIGTERM" in runs[-1][0].stderr
    marker = tmp_path / "run/buildkite-agent-drain/signalled"
    assert marker.read_text() == "build-space\n"
    # Only its owner (root, on an instance) may write there: no job can create the marker first.
    assert marker.parent.stat().st_mode & 0o777 == 0o755


def test_a_drain_marker_directory_others_may_write_is_refused_not_trusted(tmp_path: Path, stubs: Path) -> None:
    state = tmp_path / "run/buildkite-agent-drain"
    state.mkdir(parents=True)
    state.chmod(0o777)

    result, calls = run_hook(tmp_path, stubs, avail_kib=1024)

    assert result.returncode == 75
    assert "is not root's alone (drwxrwxrwx): not draining" in result.stderr
    assert not (state / "signalled").exists()
    assert not [call for call in calls if call[:2] == ["systemctl", "kill"]]


def queue_build(tmp_path: Path, stubs: Path, out_paths: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """The Nix post-build hook, as the daemon runs it."""
    hook = tmp_path / "usr/local/lib/buildkite-bootstrap/upload-to-cache.sh"
    # Its own log, and the stubs' settings file left as it is: an uploader may be running.
    env = {"PATH": str(stubs), "BOOTSTRAP_ROOT": str(tmp_path), "STUB_LOG": str(tmp_path / "hook.log")}
    env |= {"OUT_PATHS": out_paths, **extra}
    return subprocess.run(["/bin/bash", str(hook)], env=env, check=False, capture_output=True, text=True, timeout=10)


def drain(tmp_path: Path, stubs: Path, seconds: int, **extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    uploader = tmp_path / "usr/local/lib/buildkite-bootstrap/cache-uploader.sh"
    env = stub_env(stubs, tmp_path, tmp_path / "upload.log", **extra)
    started = time.monotonic()
    result = subprocess.run(
        ["/bin/bash", str(uploader), "drain", str(seconds)], env=env, check=False, capture_output=True, text=True
    )
    return result, time.monotonic() - started


@pytest.fixture
def instance(tmp_path: Path, stubs: Path) -> Path:
    install_user_data(tmp_path, render_user_data(make_settings(), X86_QUEUE, "burst", "ci-fleet"))
    nix = tmp_path / "nix/var/nix/profiles/default/bin/nix"
    nix.parent.mkdir(parents=True)
    # A wrapper, not a symlink: the stub finds its settings beside the directory it is called from.
    nix.write_text(f'#!/bin/bash\nexec "{stubs}/nix" "$@"\n')
    nix.chmod(0o755)
    return tmp_path


def test_post_build_hook_queues_and_the_uploader_signs_and_copies(instance: Path, stubs: Path) -> None:
    hook = queue_build(instance, stubs, "/nix/store/aaa-x /nix/store/bbb-y")
    result, _ = drain(instance, stubs, 60)

    assert hook.returncode == 0
    assert read_calls(instance / "hook.log") == []  # no upload inside the build
    assert result.returncode == 0
    assert read_calls(instance / "upload.log") == [
        [
            "nix",
            "copy",
            "--to",
            "s3://fleet-nix-cache?region=eu-central-1&secret-key=/etc/nix/cache-priv-key.pem",
            "/nix/store/aaa-x",
            "/nix/store/bbb-y",
        ]
    ]
    assert not list((instance / "var/lib/buildkite-cache-upload/queue").glob("batch.*"))


def test_post_build_hook_returns_0_when_it_cannot_even_queue(instance: Path, stubs: Path) -> None:
    (instance / "var/lib").mkdir(parents=True, exist_ok=True)
    (instance / "var/lib/buildkite-cache-upload").write_text("not a directory")

    hook = queue_build(instance, stubs, "/nix/store/aaa-x")

    assert hook.returncode == 0
    assert "Could not queue for the S3 cache (not uploaded): /nix/store/aaa-x" in hook.stderr


def test_failed_upload_is_logged_counted_and_never_propagated(instance: Path, stubs: Path) -> None:
    queue_build(instance, stubs, "/nix/store/aaa-x")
    queue_build(instance, stubs, "/nix/store/bbb-y")
    result, _ = drain(instance, stubs, 60, STUB_FAIL="nix copy\t1")

    assert result.returncode == 0
    assert result.stderr.count("FAILED upload of 1 paths (exit 1") == 2
    assert (instance / "var/lib/buildkite-cache-upload/failed-batches").read_text() == "2\n"
    assert not list((instance / "var/lib/buildkite-cache-upload/queue").glob("batch.*"))


def test_hanging_upload_is_bounded(instance: Path, stubs: Path) -> None:
    queue_build(instance, stubs, "/nix/store/aaa-x")
    queue_build(instance, stubs, "/nix/store/bbb-y")
    result, elapsed = drain(instance, stubs, 2, STUB_NIX_HANG="30")

    assert result.returncode == 0
    assert elapsed < 5
    assert "timed out after 2s" in result.stderr
    assert "1 batches wait for the next pass" in result.stderr


def test_uploader_unit_outlasts_its_drain_and_stops_after_the_agent() -> None:
    unit = (REPO / "userdata/buildkite-cache-upload.service").read_text()
    serve = re.search(r"cache-uploader.sh serve (\d+) (\d+)", unit)
    stop = re.search(r"TimeoutStopSec=(\d+)", unit)

    assert serve
    assert stop
    assert int(stop.group(1)) > int(serve.group(1)) + int(serve.group(2))
    assert "Before=buildkite-agent.service" in unit
    assert "KillMode=mixed" in unit


def test_uploader_drains_the_queue_when_power_off_stops_it(instance: Path, stubs: Path) -> None:
    # This one waits for real between passes.
    bin_dir = instance / "bin-real-sleep"
    bin_dir.mkdir()
    waiting = instance / "uploader-waiting"
    for entry in stubs.iterdir():
        if entry.name != "sleep":
            (bin_dir / entry.name).symlink_to(entry)
    # The real sleep, announcing that the loop has begun its wait between passes.
    (bin_dir / "sleep").write_text(f'#!/bin/sh\ntouch "{waiting}"\nexec {shutil.which("sleep")} "$@"\n')
    (bin_dir / "sleep").chmod(0o755)
    uploader = instance / "usr/local/lib/buildkite-bootstrap/cache-uploader.sh"
    env = stub_env(bin_dir, instance, instance / "upload.log")
    service = subprocess.Popen(
        ["/bin/bash", str(uploader), "serve", "60", "5"], env=env, stderr=subprocess.PIPE, text=True
    )
    # The first pass found nothing; wait (on the event, not a fixed time) until the loop sleeps.
    deadline = time.monotonic() + 10
    while not waiting.exists() and time.monotonic() < deadline:
        os.sched_yield()
    assert waiting.exists()
    queue_build(instance, stubs, "/nix/store/ccc-last-job")
    started = time.monotonic()
    service.terminate()
    _, stderr = service.communicate(timeout=10)

    assert service.returncode == 0
    assert time.monotonic() - started < 3
    assert "stopping: uploading what is queued, for at most 5 s" in stderr
    assert read_calls(instance / "upload.log")[-1][-1] == "/nix/store/ccc-last-job"
