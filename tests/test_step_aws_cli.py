"""userdata/steps/aws-cli.sh alone: AWS's own CLI build, unless one is installed."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.steps import run_step

INSTALLER = ["curl", "uname", "unzip", "aws-installer"]
# What the stubbed installer links `aws` into --bin-dir with.
LINK = ["ln", "readlink"]


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_install_aws_cli_installs_the_build_of_this_machine(tmp_path: Path, machine: str) -> None:
    run = run_step(tmp_path, "aws-cli", "install_aws_cli", commands=INSTALLER, real=LINK, env={"STUB_MACHINE": machine})

    assert run.returncode == 0, run.console
    (download,) = run.calls_of("curl")
    assert download[-1] == f"https://awscli.amazonaws.com/awscli-exe-linux-{machine}.zip"
    assert "--proto" in download
    (install,) = run.calls_of("aws-installer")
    assert install[1:] == [
        "--update",
        "--install-dir",
        f"{run.root}/usr/local/aws-cli",
        "--bin-dir",
        f"{run.root}/usr/local/bin",
    ]
    assert (run.root / "usr/local/bin/aws").exists()


def test_install_aws_cli_unpacks_under_var_tmp_and_cleans_up(tmp_path: Path) -> None:
    run = run_step(tmp_path, "aws-cli", "install_aws_cli", commands=INSTALLER, real=LINK)

    (unzip,) = run.calls_of("unzip")
    assert unzip[-1] == f"{run.root}/var/tmp/buildkite-bootstrap-awscli"
    assert not (run.root / "var/tmp/buildkite-bootstrap-awscli").exists()


def test_install_aws_cli_does_nothing_when_aws_is_installed(tmp_path: Path) -> None:
    run = run_step(tmp_path, "aws-cli", "install_aws_cli", commands=[*INSTALLER, "aws"])

    assert run.returncode == 0, run.console
    assert run.calls == []


def test_a_failed_download_installs_nothing(tmp_path: Path) -> None:
    run = run_step(tmp_path, "aws-cli", "install_aws_cli", commands=INSTALLER, fail={"curl": 22})

    assert run.returncode == 22
    assert [call[0] for call in run.calls] == ["uname", "curl"]
