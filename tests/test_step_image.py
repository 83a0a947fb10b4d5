"""userdata/steps/image.sh alone: the architecture and a baked image checked, the bake's marker."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.instance import INSTANCE_ID
from tests.support.steps import StepRun, install_nix_profile, put, root_of, run_step, settings

ARN = "arn:aws:imagebuilder:us-west-2:123456789012:image/ci-fleet-x86/1.2.0/14"
MARKER = f"image_version=1.2.0/14\nimage_arn={ARN}\nagent_version=3.87.0\nnix_version=2.31.2\n"


@pytest.mark.parametrize(("machine", "arch"), [("x86_64", "x86_64"), ("aarch64", "arm64"), ("arm64", "arm64")])
def test_check_arch_accepts_the_queues_architecture(tmp_path: Path, machine: str, arch: str) -> None:
    run = run_step(
        tmp_path, "image", "check_arch", commands=["uname"], env=settings(BK_ARCH=arch, STUB_MACHINE=machine)
    )

    assert run.returncode == 0, run.console


def test_check_arch_names_the_mismatch(tmp_path: Path) -> None:
    run = run_step(
        tmp_path, "image", "check_arch", commands=["uname"], env=settings(BK_ARCH="x86_64", STUB_MACHINE="aarch64")
    )

    assert run.returncode == 1
    assert "this is a aarch64 instance but queue nixos-x86-aws runs on x86_64" in run.stderr


def write_marker(tmp_path: Path, arn: str = ARN, fail: object = None, **env: str) -> StepRun:
    install_nix_profile(root_of(tmp_path))
    return run_step(
        tmp_path,
        "image",
        f"INSTANCE_ID={INSTANCE_ID}\nwrite_image_marker",
        commands=["aws", "buildkite-agent"],
        real=["tr"],
        env={**settings(STUB_IMAGE_ARN=arn), **env},
        fail=fail,  # type: ignore[arg-type]
    )


def test_write_image_marker_records_the_build_and_the_versions(tmp_path: Path) -> None:
    run = write_marker(tmp_path)

    assert run.returncode == 0, run.console
    assert run.read("/etc/buildkite-bootstrap/image") == MARKER
    assert run.mode("/etc/buildkite-bootstrap/image") == 0o644
    (describe,) = run.calls_of("aws")
    assert describe[1:3] == ["ec2", "describe-tags"]
    assert f"Name=resource-id,Values={INSTANCE_ID}" in describe
    assert "Name=key,Values=Ec2ImageBuilderArn" in describe


@pytest.mark.parametrize(
    "arn",
    [
        "None",
        "arn:aws:imagebuilder:us-west-2:123456789012:image/ci-fleet-x86/1.2.0",
        "arn:aws:ec2:us-west-2:123456789012:instance/i-0abc",
        f"{ARN}\nimage_version=evil",
    ],
)
def test_write_image_marker_refuses_an_odd_arn(tmp_path: Path, arn: str) -> None:
    run = write_marker(tmp_path, arn)

    assert run.returncode == 1
    assert "is not an image build ARN" in run.stderr
    assert not run.path("/etc/buildkite-bootstrap/image").exists()


@pytest.mark.parametrize(
    ("env", "fail"),
    [
        ({"STUB_AGENT_VERSION": ""}, None),
        ({"STUB_NIX_VERSION": ""}, None),
        ({}, {"buildkite-agent --version": 127}),
    ],
)
def test_write_image_marker_refuses_unknown_versions(tmp_path: Path, env: dict[str, str], fail: object) -> None:
    run = write_marker(tmp_path, fail=fail, **env)

    assert run.returncode == 1
    assert "versions not found" in run.stderr
    assert not run.path("/etc/buildkite-bootstrap/image").exists()


def test_empty_machine_id_leaves_an_empty_file(tmp_path: Path) -> None:
    put(root_of(tmp_path), "/etc/machine-id", "4f1c0c5e2f6a4e0b9a8f1d2c3b4a5968\n")
    run = run_step(tmp_path, "image", "empty_machine_id")

    assert run.returncode == 0, run.console
    assert run.read("/etc/machine-id") == ""
    assert run.mode("/etc/machine-id") == 0o444


@pytest.mark.parametrize(
    ("root_type", "booted", "fleet"), [("ext4", "ebs", "overlayroot"), ("overlay", "overlayroot", "ebs")]
)
def test_check_image_names_both_root_modes_on_a_mismatch(
    tmp_path: Path, root_type: str, booted: str, fleet: str
) -> None:
    put(root_of(tmp_path), "/etc/buildkite-bootstrap/image", MARKER)
    put(root_of(tmp_path), "/proc/mounts", f"overlayroot / {root_type} rw 0 0\n")
    run = run_step(tmp_path, "image", "check_image", real=["awk"], env=settings(BK_ROOT_MODE=fleet))

    assert run.returncode == 1
    assert f"this image boots with root mode {booted} but the fleet runs {fleet}" in run.stderr


def test_check_image_logs_the_marker_of_a_matching_image(tmp_path: Path) -> None:
    put(root_of(tmp_path), "/etc/buildkite-bootstrap/image", MARKER)
    put(root_of(tmp_path), "/proc/mounts", "overlayroot / overlay rw 0 0\n")
    run = run_step(tmp_path, "image", "check_image", real=["awk"], env=settings(BK_ROOT_MODE="overlayroot"))

    assert run.returncode == 0, run.console
    assert "baked image 1.2.0/14: buildkite-agent 3.87.0, nix 2.31.2, root overlayroot" in run.stderr
