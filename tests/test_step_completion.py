"""userdata/steps/completion.sh alone: the tag permission proved, then the one complete call."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.instance import INSTANCE_ID
from tests.support.steps import StepRun, install_nix_profile, root_of, run_step, settings, tags

COMMANDS = ["aws", "sleep"]
REAL = ["grep", "awk"]
UNAUTHORIZED = "An error occurred (UnauthorizedOperation) when calling the CreateTags operation"
UNREACHABLE = "Could not connect to the endpoint URL: https://ec2.us-west-2.amazonaws.com/"


def check(tmp_path: Path, **fail: object) -> StepRun:
    return run_step(
        tmp_path,
        "completion",
        f"INSTANCE_ID={INSTANCE_ID}\ncheck_tag_permission",
        commands=COMMANDS,
        real=REAL,
        env=settings(),
        fail=fail or None,  # type: ignore[arg-type]
    )


def test_a_permitted_dry_run_is_success(tmp_path: Path) -> None:
    run = check(tmp_path)

    assert run.returncode == 0, run.console
    (call,) = run.calls
    assert "--dry-run" in call
    assert set(tags(call)) == {
        "buildkite-autoscaler:bootstrap",
        "buildkite-autoscaler:ready-at",
        "buildkite-autoscaler:agent-version",
        "buildkite-autoscaler:nix-version",
    }


def test_a_refusal_fails_at_once_as_refused(tmp_path: Path) -> None:
    run = check(tmp_path, **{"aws ec2 create-tags": (254, 9, UNAUTHORIZED)})

    assert run.returncode == 1
    assert len(run.calls_of("aws")) == 1
    assert run.calls_of("sleep") == []
    assert "REFUSED: ec2:CreateTags on i-0abc123def4567890" in run.stderr


def test_other_errors_are_retried_then_fail_as_themselves(tmp_path: Path) -> None:
    run = check(tmp_path, **{"aws ec2 create-tags": (255, 9, UNREACHABLE)})

    assert run.returncode == 1
    assert len(run.calls_of("aws")) == 3
    assert run.calls_of("sleep") == [["sleep", "10"]] * 2
    assert f"could not check ec2:CreateTags on {INSTANCE_ID}: {UNREACHABLE}" in run.stderr
    assert "REFUSED" not in run.stderr


def test_ec2_back_within_the_attempts_is_success(tmp_path: Path) -> None:
    run = check(tmp_path, **{"aws ec2 create-tags": (255, 2, UNREACHABLE)})

    assert run.returncode == 0, run.console
    assert len(run.calls_of("aws")) == 3


def complete(tmp_path: Path, **fail: object) -> StepRun:
    root = root_of(tmp_path)
    install_nix_profile(root)
    (root / "run/buildkite-bootstrap").mkdir(parents=True)
    (root / "run/buildkite-bootstrap/agent-token").write_text("token")
    (root / "var/lib").mkdir(parents=True)
    return run_step(
        tmp_path,
        "completion",
        f"INSTANCE_ID={INSTANCE_ID}\nmark_complete",
        commands=["aws", "buildkite-agent"],
        real=[*REAL, "date", "touch"],
        env=settings(),
        fail=fail or None,  # type: ignore[arg-type]
    )


def test_mark_complete_tags_complete_ready_at_and_versions_in_one_call(tmp_path: Path) -> None:
    run = complete(tmp_path)

    assert run.returncode == 0, run.console
    (call,) = run.calls_of("aws")
    assert call[:7] == ["aws", "ec2", "create-tags", "--region", "us-west-2", "--resources", INSTANCE_ID]
    values = tags(call)
    assert values.pop("buildkite-autoscaler:bootstrap") == "complete"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", values.pop("buildkite-autoscaler:ready-at"))
    assert values == {"buildkite-autoscaler:agent-version": "3.87.0", "buildkite-autoscaler:nix-version": "2.31.2"}
    assert run.path("/var/lib/buildkite-bootstrap-complete").exists()
    assert not run.path("/run/buildkite-bootstrap").exists()


def test_mark_complete_leaves_no_flag_when_ec2_did_not_take_the_tag(tmp_path: Path) -> None:
    run = complete(tmp_path, **{"aws ec2 create-tags": (255, 9, UNREACHABLE)})

    assert run.returncode == 1
    assert not run.path("/var/lib/buildkite-bootstrap-complete").exists()
    assert "could not tag i-0abc123def4567890 buildkite-autoscaler:bootstrap=complete" in run.stderr
