"""userdata/lib/common.sh alone: the helpers every step and script uses."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.instance import INSTANCE_ID
from tests.support.steps import install_nix_profile, root_of, run_step, settings, tags


@pytest.mark.parametrize(
    ("machine", "arch"),
    [("x86_64", "x86_64"), ("amd64", "x86_64"), ("aarch64", "arm64"), ("arm64", "arm64"), ("riscv64", "riscv64")],
)
def test_machine_arch_names_the_machine_as_the_fleet_does(tmp_path: Path, machine: str, arch: str) -> None:
    run = run_step(tmp_path, None, "machine_arch", commands=["uname"], env={"STUB_MACHINE": machine})

    assert (run.returncode, run.stdout) == (0, f"{arch}\n"), run.console


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3.87.0", "3.87.0"),
        ("2.28.3 (Determinate) {x}", "2.28.3 _Determinate_ _x_"),
        ("a" * 300, "a" * 256),
        ("", "unknown"),
        ("a;$`'\"b", "a_____b"),
    ],
)
def test_tag_value_keeps_to_ec2_tag_value_rules(tmp_path: Path, text: str, value: str) -> None:
    run = run_step(tmp_path, None, 'tag_value "$TEXT"', env={"TEXT": text})

    assert (run.returncode, run.stdout) == (0, f"{value}\n"), run.console


def test_imds_get_sends_the_session_token_on_stdin_never_in_argv(tmp_path: Path) -> None:
    run = run_step(tmp_path, None, "imds_get meta-data/instance-id", commands=["curl"])

    assert (run.returncode, run.stdout) == (0, INSTANCE_ID), run.console
    token, document = run.calls_of("curl")
    assert token[-1].endswith("/latest/api/token")
    assert "PUT" in token
    assert document[-1].endswith("/latest/meta-data/instance-id")
    assert run.stdin_of_curl() == "X-aws-ec2-metadata-token: imds-session-token\n"
    assert not any("imds-session-token" in arg for call in run.calls for arg in call)


def test_imds_get_fails_without_a_session_token_and_asks_for_nothing(tmp_path: Path) -> None:
    run = run_step(tmp_path, None, "imds_get meta-data/instance-id", commands=["curl"], fail={"curl": 7})

    assert run.returncode == 7
    assert len(run.calls_of("curl")) == 1


LOCKED = "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 812 (apt-get)"


def test_apt_get_is_retried_while_a_lock_is_held(tmp_path: Path) -> None:
    run = run_step(
        tmp_path,
        None,
        "apt_get update",
        commands=["apt-get", "sleep"],
        real=["grep"],
        fail={"apt-get": (100, 2, LOCKED)},
    )

    assert run.returncode == 0, run.console
    assert len(run.calls_of("apt-get")) == 3
    assert run.calls_of("sleep") == [["sleep", "10"]] * 2
    assert "another apt holds a lock, retry 2 of 60" in run.stderr


def test_apt_get_gives_up_after_apt_lock_retries(tmp_path: Path) -> None:
    run = run_step(
        tmp_path,
        None,
        "APT_LOCK_RETRIES=4\napt_get install jq",
        commands=["apt-get", "sleep"],
        real=["grep"],
        fail={"apt-get": (100, 99, LOCKED)},
    )

    assert run.returncode == 1
    assert len(run.calls_of("apt-get")) == 4
    assert len(run.calls_of("sleep")) == 3
    assert not (run.root / "var/tmp/buildkite-bootstrap-apt.err").exists()


def test_apt_get_fails_at_once_on_any_other_error(tmp_path: Path) -> None:
    run = run_step(
        tmp_path,
        None,
        "apt_get install nosuchpackage",
        commands=["apt-get", "sleep"],
        real=["grep"],
        fail={"apt-get": (100, 99, "E: Unable to locate package nosuchpackage")},
    )

    assert run.returncode == 1
    assert len(run.calls_of("apt-get")) == 1
    assert run.calls_of("sleep") == []
    assert "Unable to locate package nosuchpackage" in run.stderr


@pytest.mark.parametrize(
    ("agent", "nix", "expected"),
    [
        ("buildkite-agent version 3.87.0, build 5805", "nix (Nix) 2.28.3", "3.87.0 2.28.3"),
        ("", "", "unknown unknown"),
    ],
)
def test_versions_are_read_as_tag_values(tmp_path: Path, agent: str, nix: str, expected: str) -> None:
    install_nix_profile(root_of(tmp_path))
    run = run_step(
        tmp_path,
        None,
        'echo "$(agent_version) $(nix_version)"',
        commands=["buildkite-agent"],
        env={"STUB_AGENT_VERSION": agent, "STUB_NIX_VERSION": nix},
    )

    assert (run.returncode, run.stdout) == (0, f"{expected}\n"), run.console


def test_a_version_command_that_fails_is_unknown(tmp_path: Path) -> None:
    run = run_step(
        tmp_path, None, 'echo "$(agent_version) $(nix_version)"', commands=["buildkite-agent"], fail={"buildkite": 1}
    )

    assert (run.returncode, run.stdout) == (0, "unknown unknown\n"), run.console


def test_write_secret_is_readable_by_root_alone(tmp_path: Path) -> None:
    run = run_step(tmp_path, None, 'echo s3cret >"$ROOT/in"\nwrite_secret "$ROOT/in" "$ROOT/deep/dir/key"')

    assert run.returncode == 0, run.console
    assert run.read("/deep/dir/key") == "s3cret\n"
    assert run.mode("/deep/dir/key") == 0o600


FAILING_STEP = """
trap 'on_failure $?' ERR
INSTANCE_ID=i-0abc123def4567890
STEP=check_arch
die "this is wrong"
"""


def test_on_failure_without_power_off_only_prints_the_failure_line(tmp_path: Path) -> None:
    run = run_step(tmp_path, None, FAILING_STEP, commands=["aws", "systemctl"], env=settings())

    assert run.returncode == 1
    assert run.stderr.splitlines()[-1] == "buildkite-bootstrap: FAILED step=check_arch exit=1: this is wrong"
    assert run.calls == []


def test_on_failure_with_power_off_tags_failed_then_prints_the_failure_line_last(tmp_path: Path) -> None:
    run = run_step(
        tmp_path,
        None,
        FAILING_STEP,
        commands=["aws", "systemctl"],
        env=settings(POWER_OFF_ON_FAILURE="true"),
    )

    assert run.returncode == 1
    (tag,) = run.calls_of("aws")
    assert tags(tag) == {"buildkite-autoscaler:bootstrap": "failed"}
    assert run.calls[-1] == ["systemctl", "--no-block", "poweroff"]
    assert run.stderr.splitlines()[-2:] == [
        "buildkite-bootstrap: FAILED step=check_arch exit=1: this is wrong",
        "buildkite-bootstrap: powering off",
    ]


@pytest.mark.parametrize(
    ("script", "fail"),
    [
        (FAILING_STEP.replace("INSTANCE_ID=i-0abc123def4567890", ""), None),
        (FAILING_STEP, {"aws ec2 create-tags": (255, 9, "Could not connect to the endpoint URL")}),
    ],
)
def test_on_failure_powers_off_even_when_it_cannot_tag(tmp_path: Path, script: str, fail: object) -> None:
    run = run_step(
        tmp_path,
        None,
        script,
        commands=["aws", "systemctl"],
        real=["grep", "awk"],
        env=settings(POWER_OFF_ON_FAILURE="true"),
        fail=fail,  # type: ignore[arg-type]
    )

    assert run.returncode == 1
    assert run.calls[-1] == ["systemctl", "--no-block", "poweroff"]
    assert run.stderr.splitlines()[-2:] == [
        "buildkite-bootstrap: FAILED step=check_arch exit=1: this is wrong",
        "buildkite-bootstrap: powering off",
    ]


def test_tag_instance_names_a_refusal_as_one(tmp_path: Path) -> None:
    run = run_step(
        tmp_path,
        None,
        "INSTANCE_ID=i-0abc123def4567890\ntag_instance pooled",
        commands=["aws"],
        real=["grep", "awk"],
        env=settings(),
        fail={"aws ec2 create-tags": (254, 99, "An error occurred (UnauthorizedOperation) when calling CreateTags")},
    )

    assert run.returncode == 1
    assert "REFUSED: ec2:CreateTags on i-0abc123def4567890 (buildkite-autoscaler:bootstrap=pooled)" in run.stderr


def test_clean_environment_keeps_only_the_names_given(tmp_path: Path) -> None:
    run = run_step(
        tmp_path,
        None,
        "KEPT=1 DROPPED=2 HOME=/home/buildkite-agent clean_environment KEPT -- -c 'env | sort'",
        real=["env", "sort"],
    )

    assert run.returncode == 0, run.console
    env = dict(line.split("=", 1) for line in run.stdout.splitlines())
    assert env["KEPT"] == "1"
    assert "DROPPED" not in env
    assert env["HOME"] == f"{run.root}/root"
    assert env["BK_CLEAN_ENVIRONMENT"] == "1"
