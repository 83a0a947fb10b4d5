"""userdata/steps/agent.sh alone: the agent's package, its config and its start."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.instance import FINGERPRINT, INSTANCE_ID
from tests.support.steps import StepRun, put, root_of, run_step, settings

MADISON = "\n".join(
    f" buildkite-agent | {version} | https://apt.buildkite.com/buildkite-agent stable/main amd64 Packages"
    for version in ["30.1.0-1", "4.0.0-7000", "3.138.0-6100", "3.87.1-5900", "3.87.0-5805", "3.8.0-1000"]
)
TOKEN = "bkct_FAKE_TOKEN_7f3a9c"


def package(tmp_path: Path, version: str, madison: str = MADISON) -> StepRun:
    return run_step(
        tmp_path,
        "agent",
        "agent_package",
        commands=["apt-cache"],
        real=["awk"],
        env=settings(BK_AGENT_VERSION=version, STUB_MADISON=madison),
    )


@pytest.mark.parametrize(
    ("version", "chosen"),
    [
        ("3", "3.138.0-6100"),
        ("4", "4.0.0-7000"),
        ("3.87.0", "3.87.0-5805"),
        ("3.8.0", "3.8.0-1000"),
        ("30", "30.1.0-1"),
    ],
)
def test_agent_package_is_the_newest_build_of_a_major_or_exactly_a_version(
    tmp_path: Path, version: str, chosen: str
) -> None:
    run = package(tmp_path, version)

    assert (run.returncode, run.stdout) == (0, f"buildkite-agent={chosen}\n"), run.console


@pytest.mark.parametrize("version", ["5", "3.87", "3.87.2"])
def test_agent_package_refuses_a_version_the_repository_lacks(tmp_path: Path, version: str) -> None:
    run = package(tmp_path, version)

    assert (run.returncode, run.stdout) == (1, "")
    assert f"buildkite-agent {version} is not in apt.buildkite.com" in run.stderr


INSTALL = ["curl", "gpg", "apt-get", "apt-cache", "systemctl", "sleep"]


def install(tmp_path: Path, fingerprint: str = FINGERPRINT) -> StepRun:
    return run_step(
        tmp_path,
        "agent",
        "install_agent",
        commands=INSTALL,
        real=["awk", "grep"],
        env=settings(BK_AGENT_VERSION="3.87.0", STUB_MADISON=MADISON, STUB_FINGERPRINT=fingerprint),
    )


def test_install_agent_installs_the_pinned_package_from_the_signed_repository(tmp_path: Path) -> None:
    run = install(tmp_path)

    assert run.returncode == 0, run.console
    keyring = "/usr/share/keyrings/buildkite-agent-archive-keyring.gpg"
    assert run.read(keyring).startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert run.read("/etc/apt/sources.list.d/buildkite-agent.list") == (
        f"deb [signed-by={keyring}] https://apt.buildkite.com/buildkite-agent stable main\n"
    )
    assert run.calls_of("curl")[0][-1] == f"https://keys.openpgp.org/vks/v1/by-fingerprint/{FINGERPRINT}"
    assert [call[5:] for call in run.calls_of("apt-get")] == [["update"], ["install", "buildkite-agent=3.87.0-5805"]]
    assert run.calls[-1] == ["systemctl", "disable", "--now", "buildkite-agent.service"]


def test_install_agent_refuses_a_key_of_another_fingerprint(tmp_path: Path) -> None:
    run = install(tmp_path, fingerprint="0" * 40)

    assert run.returncode == 1
    assert f"the downloaded Buildkite signing key is not {FINGERPRINT}" in run.stderr
    assert run.calls_of("apt-get") == []


def agent_config(tmp_path: Path, token: str = TOKEN, **changes: str) -> StepRun:
    put(root_of(tmp_path), "/run/buildkite-bootstrap/agent-token", token, mode=0o600)
    return run_step(
        tmp_path,
        "agent",
        f"INSTANCE_ID={INSTANCE_ID}\nwrite_agent_config",
        commands=["chgrp"],
        env=settings(**changes),
    )


def config(run: StepRun) -> dict[str, str]:
    return dict(line.split("=", 1) for line in run.read("/etc/buildkite-agent/buildkite-agent.cfg").splitlines())


def test_write_agent_config_holds_the_token_for_the_agents_group_alone(tmp_path: Path) -> None:
    run = agent_config(tmp_path)

    assert run.returncode == 0, run.console
    assert config(run) == {
        "token": f'"{TOKEN}"',
        "name": f'"nixos-x86-aws-{INSTANCE_ID}-%spawn"',
        "spawn": "5",
        "tags": '"nix=true,os=nixos,arch=x86_64,queue=nixos-x86-aws,fleet=ci-fleet"',
        "tags-from-ec2-meta-data": "true",
        "build-path": '"/var/lib/buildkite-agent/builds"',
        "hooks-path": '"/etc/buildkite-agent/hooks"',
        "plugins-path": '"/etc/buildkite-agent/plugins"',
        "disconnect-after-idle-timeout": "600",
        "disconnect-after-uptime": "21600",
    }
    assert run.mode("/etc/buildkite-agent/buildkite-agent.cfg") == 0o640
    assert run.calls == [["chgrp", "buildkite-agent", f"{run.root}/etc/buildkite-agent/buildkite-agent.cfg"]]
    assert not any(TOKEN in arg for call in run.calls for arg in call)


def test_a_floor_agent_has_no_idle_timeout(tmp_path: Path) -> None:
    run = agent_config(tmp_path, BK_IDLE_TIMEOUT_SECONDS="0", BK_MAX_UPTIME_SECONDS="0")

    assert run.returncode == 0, run.console
    assert "disconnect-after-idle-timeout" not in config(run)
    assert "disconnect-after-uptime" not in config(run)


@pytest.mark.parametrize("token", ['abc"\ndebug=true', "abc def", "", "tok$(id)"])
def test_write_agent_config_refuses_a_token_with_odd_characters(tmp_path: Path, token: str) -> None:
    run = agent_config(tmp_path, token=token)

    assert run.returncode == 1
    assert "the value of /bk/agent-token has characters no agent token has" in run.stderr
    assert not run.path("/etc/buildkite-agent/buildkite-agent.cfg").exists()


def start(tmp_path: Path, fail: dict | None = None) -> StepRun:
    return run_step(
        tmp_path, "agent", 'start_agent\necho "started=$AGENT_STARTED"', commands=["systemctl", "sleep"], fail=fail
    )


def test_start_agent_starts_the_uploader_the_watcher_and_the_agent_and_watches_it(tmp_path: Path) -> None:
    run = start(tmp_path)

    assert (run.returncode, run.stdout) == (0, "started=true\n"), run.console
    assert run.calls_of("systemctl")[:3] == [
        ["systemctl", "start", "buildkite-cache-upload.service"],
        ["systemctl", "start", "--no-block", "spot-interruption-watch.service"],
        ["systemctl", "start", "buildkite-agent.service"],
    ]
    assert run.calls_of("systemctl")[3:] == [["systemctl", "is-active", "--quiet", "buildkite-agent.service"]] * 4


def test_start_agent_fails_when_the_agent_stops_within_its_checks(tmp_path: Path) -> None:
    run = start(tmp_path, fail={"systemctl is-active": 3})

    assert run.returncode == 1
    assert "buildkite-agent is not running (check 1 of 4)" in run.stderr
