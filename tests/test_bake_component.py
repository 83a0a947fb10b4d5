"""The image bake as Image Builder runs it: the template's component, then userdata/bake.sh.

The component's commands come from template.yaml; its absolute work directory is moved
under tmp_path. The artifact it fetches is the one `sam build` makes (instance/ and
userdata/ from this repository), the bake's Python runs without site-packages as on the
build instance, and every command that touches the system or the network is the
instance scripts' stub (tests/stubs/command-stub.sh).
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support import instance as harness
from tests.support.instance import MADISON, Run, read_calls, stub_env, stub_failures
from tests.support.userdata import PUBLIC_KEY, REPO
from tools.invoke import load_template

from instance.files import instance_file

stubs = harness.stubs

WORK = "/var/tmp/buildkite-bake"
SETTINGS_PARAMETER = "/bk/build-settings"
SETTINGS: dict[str, Any] = {
    "fleet": "ci-fleet",
    "region": "eu-west-1",
    "root_mode": "overlayroot",
    "nix_determinate": True,
    "agent_version": "3.87.0",
    "nix_installer_version": "v3.21.2",
    "nix_trust_jobs": False,
    "cache_bucket": "fleet-nix-cache",
    "cache_region": "eu-central-1",
    "cache_public_key": PUBLIC_KEY,
    "warm_nix_paths": "nixpkgs#hello github:org/repo#devShells.x86_64-linux.default",
}


def component_commands() -> dict[str, str]:
    """Each step's commands, by phase/step name, with CloudFormation's substitutions made."""
    component = load_template()["Resources"]["AgentImageComponent"]["Properties"]
    text = component["Data"]["Fn::Sub"]
    for name, value in {"AWS::Region": "eu-west-1", "ScalerFunction": "bk-scaler"}.items():
        text = text.replace("${" + name + "}", value)
    text = text.replace("${ImageBuildSettings}", SETTINGS_PARAMETER)
    document = yaml.safe_load(text)
    return {
        f"{phase['name']}/{step['name']}": "\n".join(step["inputs"]["commands"])
        for phase in document["phases"]
        for step in phase["steps"]
    }


def artifact(path: Path) -> Path:
    """The Lambda artifact as the makefile build lays it out: instance/, autoscaler/, userdata/."""
    with zipfile.ZipFile(path, "w") as archive:
        for top in (REPO / "functions/instance", REPO / "functions/autoscaler", REPO / "userdata"):
            for file in sorted(top.rglob("*")):
                if file.is_file() and "__pycache__" not in file.parts:
                    archive.write(file, file.relative_to(top.parent).as_posix())
    return path


class Bake:
    """One build instance: its root, the component's work directory, the stubs' log."""

    def __init__(self, tmp_path: Path, stubs: Path, settings: dict[str, Any]) -> None:
        self.tmp_path, self.stubs = tmp_path, stubs
        self.root, self.work = tmp_path / "root", tmp_path / "work"
        (self.root / "run").mkdir(parents=True)
        # No site-packages, as Ubuntu's python3 on the build instance.
        python = stubs / "python3"
        python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
        python.chmod(0o755)
        parameter = stubs.parent / "ssm" / SETTINGS_PARAMETER.lstrip("/")
        parameter.parent.mkdir(parents=True, exist_ok=True)
        parameter.write_text(json.dumps(settings))
        self.artifact = artifact(tmp_path / "artifact.zip")

    def step(self, name: str, **fail: int | tuple[int, int, str]) -> Run:
        log = self.tmp_path / "calls.log"
        log.unlink(missing_ok=True)
        (self.root / "proc").mkdir(exist_ok=True)
        (self.root / "proc/mounts").write_text("/dev/root / ext4 rw 0 0\n")
        env = stub_env(
            self.stubs, self.root, log, STUB_ARTIFACT=str(self.artifact), STUB_MADISON=MADISON,
            STUB_FAIL=stub_failures(fail),
        )  # fmt: skip
        script = component_commands()[name].replace(WORK, str(self.work))
        result = subprocess.run(["/bin/bash", "-c", script], env=env, capture_output=True, text=True, check=False)
        return Run(result.returncode, result.stdout + result.stderr, read_calls(log), self.root)


@pytest.fixture
def bake(tmp_path: Path, stubs: Path) -> Bake:
    return Bake(tmp_path, stubs, SETTINGS)


def test_the_component_fetches_the_deployed_artifact_and_runs_its_bake_script() -> None:
    commands = component_commands()

    assert list(commands) == ["build/Fetch", "build/Install", "validate/NoSecrets"]
    assert commands["build/Install"].endswith(f"bash {WORK}/userdata/bake.sh build {SETTINGS_PARAMETER}")
    assert commands["validate/NoSecrets"] == f"bash {WORK}/userdata/bake.sh validate"


def test_the_component_bakes_the_stock_install_into_an_image_and_marks_it(bake: Bake) -> None:
    fetched = bake.step("build/Fetch")
    built = bake.step("build/Install")

    assert (fetched.returncode, built.returncode) == (0, 0), fetched.console + built.console
    root = bake.root
    # The user-data's own files, where cloud-init would write them.
    assert (root / "usr/local/sbin/buildkite-bootstrap").read_text() == instance_file(REPO / "userdata", "bootstrap.sh")
    assert (root / "usr/local/lib/buildkite-bootstrap/steps/agent.sh").is_file()
    settings = (root / "etc/buildkite-bootstrap/settings.env").read_text()
    assert "BK_ROOT_MODE=overlayroot" in settings
    assert "PARAMETER" not in settings  # no name of a secret, let alone one
    # The install steps ran: packages with overlayroot's, the initramfs, the pinned agent.
    assert any(call[:2] == ["apt-get", "-q"] and "overlayroot" in call for call in built.calls)
    assert ["update-initramfs", "-u"] in built.calls
    assert any("buildkite-agent=3.87.0-5805" in call for call in built.calls)
    # Then the warm store, one reference at a time, without the cache upload.
    warmed = [call[-1] for call in built.calls if call[0] == "nix" and "build" in call]
    assert warmed == ["nixpkgs#hello", "github:org/repo#devShells.x86_64-linux.default"]
    marker = (root / "etc/buildkite-bootstrap/image").read_text()
    assert marker.splitlines() == [
        "image_version=1.0.0/7",
        "image_arn=arn:aws:imagebuilder:us-west-2:123456789012:image/a/1.0.0/7",
        "agent_version=3.87.0",
        "nix_version=2.31.2",
    ]
    assert (root / "etc/machine-id").read_bytes() == b""

    checked = bake.step("validate/NoSecrets")

    assert checked.returncode == 0, checked.console
    assert not bake.work.exists()  # the artifact is not left in the image


def test_a_failed_install_step_fails_the_bake_before_the_image_is_marked(bake: Bake) -> None:
    bake.step("build/Fetch")

    built = bake.step("build/Install", **{"apt-get -q -y -o DPkg::Lock::Timeout=600 install": 100})

    assert built.returncode == 1
    assert "FAILED step=install_packages exit=1" in built.console
    assert not (bake.root / "etc/buildkite-bootstrap/image").exists()
    assert not [call for call in built.calls if "poweroff" in call or call[:3] == ["aws", "ec2", "create-tags"]]


def test_bad_settings_fail_the_bake_naming_the_field_before_anything_is_written(tmp_path: Path, stubs: Path) -> None:
    bake = Bake(tmp_path, stubs, {**SETTINGS, "root_mode": "zfs"})
    bake.step("build/Fetch")

    built = bake.step("build/Install")

    assert built.returncode == 2
    assert "root_mode" in built.console
    assert "'zfs'" in built.console
    assert not (bake.root / "usr").exists()
    assert not [call for call in built.calls if call[0] in ("apt-get", "systemctl")]


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("home/ubuntu/.ssh/id_ed25519", "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n"),
        ("etc/nix/cache-priv-key.pem", "fleet-cache-1:" + "A" * 86 + "=="),
        ("etc/buildkite-agent/buildkite-agent.cfg", 'token="bkct_leaked_for_sure"\n'),
    ],
)
def test_a_secret_left_on_the_disk_fails_the_validate_phase(bake: Bake, path: str, text: str) -> None:
    bake.step("build/Fetch")
    assert bake.step("build/Install").returncode == 0
    planted = bake.root / path
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_text(text)

    checked = bake.step("validate/NoSecrets")

    assert checked.returncode == 1
    assert "FAILED step=check_no_secrets" in checked.console
    assert str(planted) in checked.console


def test_the_fetch_step_passes_shellcheck(tmp_path: Path) -> None:
    script = tmp_path / "fetch.sh"
    script.write_text("#!/usr/bin/env bash\n" + component_commands()["build/Fetch"])

    result = subprocess.run(
        [str(REPO / ".venv/bin/shellcheck"), str(script)], check=False, capture_output=True, text=True
    )

    assert result.returncode == 0, result.stdout
