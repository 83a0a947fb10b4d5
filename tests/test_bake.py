"""The image bake's steps (autoscaler.bake) and the Image Builder component that runs them.

The bake installs the same files the user-data writes at a stock boot, then runs
the same install step; it refuses to leave a secret in the image.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.test_userdata_render import QUEUES, SETTINGS
from tools.invoke import load_template

from autoscaler.bake import (
    MARKER_PATH,
    SETTINGS_PATH,
    BakeError,
    BakeSettings,
    find_secrets,
    install_files,
    marker,
    warm_commands,
)
from autoscaler.userdata import instance_file, render_user_data

REPO = Path(__file__).resolve().parent.parent
FLEET = "ci-fleet"
ARN = "arn:aws:imagebuilder:us-west-2:123456789012:image/bk-x86_64/1.0.0/7"
SETTINGS_JSON = {
    "fleet": FLEET,
    "region": SETTINGS.region,
    "root_mode": "overlayroot",
    "nix_determinate": True,
    "agent_version": "3.87.0",
    "cache_bucket": SETTINGS.cache_bucket,
    "cache_region": SETTINGS.cache_region,
    "cache_public_key": SETTINGS.cache_public_key,
    "warm_nix_paths": "nixpkgs#hello /nix/store/0c0pmx7w1v8vsh2hfk3jl3z2qkd4xmm5-jq-1.7",
}
NIX_SECRET = "cache-1:" + "A" * 86 + "=="
NIX_PUBLIC = "cache-1:" + "A" * 43 + "="


def bake_settings(**changes: Any) -> BakeSettings:
    return BakeSettings.from_json(json.dumps({**SETTINGS_JSON, **changes}))


def user_data_files() -> dict[str, dict[str, Any]]:
    text = render_user_data(SETTINGS, QUEUES["x86"], "burst", FLEET)
    if text[:2] == b"\x1f\x8b":
        text = gzip.decompress(text)
    return {entry["path"]: entry for entry in yaml.safe_load(text)["write_files"]}


def sourced(path: Path, *names: str) -> list[str]:
    script = f'set -eu; . "{path}"; ' + "; ".join(f'printf "%s\\n" "${{{name}:-}}"' for name in names)
    return subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True).stdout.splitlines()


# ----------------------------------------------------------------- the same files as the stock boot


def test_the_bake_installs_exactly_the_files_the_user_data_writes(tmp_path: Path) -> None:
    install_files(tmp_path, bake_settings(), "x86_64")

    expected = user_data_files()
    installed = {"/" + str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert installed == set(expected)
    for path, entry in expected.items():
        if path == "/" + SETTINGS_PATH:
            continue  # per launch at a stock boot; install-time values only in the image
        target = tmp_path / path.lstrip("/")
        # Same bytes, same mode: the bake runs the stock boot's own bootstrap script.
        assert target.read_text(encoding="utf-8") == entry["content"], path
        assert oct(target.stat().st_mode & 0o777) == oct(int(entry["permissions"], 8)), path
    assert (tmp_path / "usr/local/sbin/buildkite-bootstrap").read_text() == instance_file(
        REPO / "userdata", "bootstrap.sh"
    )


def test_the_bake_settings_hold_install_time_values_and_no_names_of_secrets(tmp_path: Path) -> None:
    install_files(tmp_path, bake_settings(), "aarch64")

    settings = tmp_path / SETTINGS_PATH
    names = ("BK_ARCH", "BK_FLEET", "BK_REGION", "BK_ROOT_MODE", "BK_NIX_DETERMINATE", "BK_AGENT_VERSION")
    names += ("BK_CACHE_BUCKET", "BK_CACHE_REGION", "BK_CACHE_PUBLIC_KEY")
    assert sourced(settings, *names) == [
        "arm64",
        FLEET,
        "us-west-2",
        "overlayroot",
        "true",
        "3.87.0",
        SETTINGS.cache_bucket,
        SETTINGS.cache_region,
        SETTINGS.cache_public_key,
    ]
    text = settings.read_text(encoding="ascii")
    assert "PARAMETER" not in text
    assert "BK_QUEUE" not in text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"region": "Mars-1"}, "region must be an AWS region such as us-west-2 (got 'Mars-1')"),
        ({"root_mode": "zfs"}, "root_mode must be one of overlayroot, ebs (got 'zfs')"),
        ({"nix_determinate": "yes"}, "nix_determinate must be true or false (got 'yes')"),
        ({"cache_bucket": ""}, "cache_bucket must be a non-empty string (got '')"),
        ({"warm_nix_paths": "nixpkgs#hello $(reboot)"}, "warm_nix_paths has an odd reference (got '$(reboot)')"),
    ],
)
def test_bad_bake_settings_name_the_field_and_the_value(changes: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        install_files(tmp_path, bake_settings(**changes), "x86_64")
    # Nothing half-done: no file is written by a bake that cannot say what to install.
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_machine_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BakeError, match=re.escape("arch must be x86_64 or aarch64 (got 'riscv64')")):
        install_files(tmp_path, bake_settings(), "riscv64")


def test_the_warm_store_is_fetched_without_the_post_build_hook() -> None:
    commands = warm_commands(bake_settings(), nix="nix")
    assert [command[-1] for command in commands] == ["nixpkgs#hello", SETTINGS_JSON["warm_nix_paths"].split()[1]]
    for command in commands:
        # The hook would upload with a signing key the bake does not (and must not) have.
        assert command[command.index("post-build-hook") + 1] == ""
    assert warm_commands(bake_settings(warm_nix_paths="")) == []


# ----------------------------------------------------------------- marker and secrets


def test_the_marker_records_the_image_agent_and_nix_versions() -> None:
    text = marker(ARN, "buildkite-agent version 3.87.0, build 5805\n", "nix (Determinate Nix 3.6.2) 2.29.0\n")
    assert dict(line.split("=", 1) for line in text.splitlines()) == {
        "image_version": "1.0.0/7",
        "image_arn": ARN,
        "agent_version": "3.87.0",
        "nix_version": "2.29.0",
    }
    with pytest.raises(BakeError, match="image_arn must be an Image Builder image build ARN"):
        marker("None", "buildkite-agent version 3.87.0", "nix 2.29.0")


def plant(root: Path, path: str, text: str) -> None:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")


def test_a_clean_image_passes_with_the_packages_placeholder_token_and_the_public_key(tmp_path: Path) -> None:
    install_files(tmp_path, bake_settings(), "x86_64")
    plant(tmp_path, "etc/buildkite-agent/buildkite-agent.cfg", 'token="xxx"\nname="%hostname-%spawn"\n')
    plant(tmp_path, "etc/nix/nix.custom.conf", f"trusted-public-keys = {NIX_PUBLIC}\n")
    # Host keys are Image Builder's to remove; the scan looks where the project writes.
    plant(tmp_path, "etc/ssh/ssh_host_ed25519_key", "-----BEGIN OPENSSH PRIVATE KEY-----\n")
    # The bootstrap's work directory, left by the install step without secrets in it.
    (tmp_path / "run/buildkite-bootstrap").mkdir(parents=True)
    assert find_secrets(tmp_path) == []


def test_the_narinfo_signatures_that_warming_caches_are_not_taken_for_a_signing_key(tmp_path: Path) -> None:
    # `warm` runs nix as root: its narinfo cache keeps each path's signature, which has a
    # signing key's shape (64 bytes). It must not fail the bake; a real key elsewhere still does.
    signature = "cache.nixos.org-1:" + "s" * 86 + "=="
    plant(tmp_path, "root/.cache/nix/binary-cache-v6.sqlite", f"SQLite format 3\x00/nix/store/abc-hello {signature}")
    assert find_secrets(tmp_path) == []

    plant(tmp_path, "root/nix-secret", NIX_SECRET)
    assert find_secrets(tmp_path) == ["/root/nix-secret holds a Nix signing key"]


@pytest.mark.parametrize(
    ("path", "text", "finding"),
    [
        ("etc/nix/cache-priv-key.pem", "x", "/etc/nix/cache-priv-key.pem exists"),
        ("var/lib/buildkite-agent/.ssh/id_ed25519", "x", "/var/lib/buildkite-agent/.ssh/id_ed25519 exists"),
        ("run/buildkite-bootstrap/agent-token", "x", "/run/buildkite-bootstrap/agent-token exists"),
        ("root/.aws/credentials", "[default]", "/root/.aws/credentials exists"),
        ("etc/buildkite-agent/buildkite-agent.cfg", 'token="bkct_0123"\n', "holds an agent token"),
        ("home/ubuntu/notes", "-----BEGIN RSA PRIVATE KEY-----\n", "/home/ubuntu/notes holds a private key"),
        ("etc/nix/nix.custom.conf", f"secret = {NIX_SECRET}\n", "/etc/nix/nix.custom.conf holds a Nix signing key"),
    ],
)
def test_a_secret_left_in_the_image_is_found(tmp_path: Path, path: str, text: str, finding: str) -> None:
    plant(tmp_path, path, text)
    (found,) = find_secrets(tmp_path)
    assert finding in found


# ----------------------------------------------------------------- the command line, as the component runs it


def bake_cli(root: Path, *args: str, path: str = "") -> subprocess.CompletedProcess[str]:
    # -S: no site-packages, as on the build instance (Ubuntu's python3, nothing installed).
    environment = {"PYTHONPATH": str(REPO / "functions"), "PATH": f"{path}:/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-S", "-m", "autoscaler.bake", "--root", str(root), *args],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )


def stub(directory: Path, name: str, output: str) -> None:
    directory.mkdir(exist_ok=True)
    script = directory / name
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' '{output}'\n", encoding="utf-8")
    script.chmod(0o755)


def test_the_command_line_installs_marks_and_checks_without_third_party_packages(tmp_path: Path) -> None:
    root, stubs = tmp_path / "root", tmp_path / "bin"
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(SETTINGS_JSON), encoding="utf-8")
    stub(stubs, "buildkite-agent", "buildkite-agent version 3.87.0, build 5805")
    stub(stubs, "nix", "nix (Nix) 2.28.3")

    installed = bake_cli(root, "install-files", "--settings", str(settings), "--arch", "x86_64")
    marked = bake_cli(root, "mark", "--image-arn", ARN, path=str(stubs))
    clean = bake_cli(root, "check-secrets")
    plant(root, "etc/nix/cache-priv-key.pem", "x")
    dirty = bake_cli(root, "check-secrets")
    bad = bake_cli(root, "install-files", "--settings", os.devnull, "--arch", "x86_64")

    assert (installed.returncode, marked.returncode, clean.returncode) == (0, 0, 0), installed.stderr + marked.stderr
    assert "nix_version=2.28.3" in (root / MARKER_PATH).read_text(encoding="ascii")
    assert dirty.returncode == 1
    assert "SECRET IN IMAGE: /etc/nix/cache-priv-key.pem exists" in dirty.stderr
    assert bad.returncode == 2
    assert "build settings must be a JSON object" in bad.stderr


def test_marking_the_image_empties_the_build_instances_machine_id(tmp_path: Path) -> None:
    root, stubs = tmp_path / "root", tmp_path / "bin"
    stub(stubs, "buildkite-agent", "buildkite-agent version 3.87.0, build 5805")
    stub(stubs, "nix", "nix (Nix) 2.28.3")
    plant(root, "etc/machine-id", "3f1a9c0e7d2b4a6f8e1c3b5d7a9f0e2c\n")

    marked = bake_cli(root, "mark", "--image-arn", ARN, path=str(stubs))

    assert marked.returncode == 0, marked.stderr
    machine_id = root / "etc/machine-id"
    assert machine_id.is_file()
    assert machine_id.read_bytes() == b""


# ----------------------------------------------------------------- the component in the template


def component_steps() -> dict[str, str]:
    """Each step's script, by phase/step name."""
    component = load_template()["Resources"]["AgentImageComponent"]["Properties"]
    document = yaml.safe_load(component["Data"]["Fn::Sub"])
    return {
        f"{phase['name']}/{step['name']}": "\n".join(step["inputs"]["commands"])
        for phase in document["phases"]
        for step in phase["steps"]
    }


def test_the_component_runs_the_stock_install_step_between_the_bake_steps() -> None:
    steps = component_steps()
    assert set(steps) == {"build/Install", "validate/NoSecrets"}
    lines = [line.strip() for line in steps["build/Install"].splitlines()]
    order = [
        next(i for i, line in enumerate(lines) if line.startswith(prefix))
        for prefix in (
            "url=$(aws lambda get-function",
            "bake install-files",
            "/usr/local/sbin/buildkite-bootstrap install",
            "bake warm",
            "bake mark",
        )
    ]
    assert order == sorted(order)
    validate = steps["validate/NoSecrets"]
    assert validate.index("check-secrets") < validate.index('rm -rf "$src"')


@pytest.mark.parametrize("step", ["build/Install", "validate/NoSecrets"])
def test_the_component_scripts_pass_shellcheck(step: str, tmp_path: Path) -> None:
    # ${Name} are CloudFormation's substitutions; give them plain values.
    script = re.sub(r"\$\{[A-Za-z:]+\}", "value", component_steps()[step])
    path = tmp_path / "step.sh"
    path.write_text("#!/usr/bin/env bash\n" + script, encoding="utf-8")
    result = subprocess.run(
        [str(REPO / ".venv/bin/shellcheck"), str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


# ----------------------------------------------------------------- the component's steps, run under stubs

COMPONENT_STUB = r"""#!/bin/bash
name=${0##*/}
printf '%s\x1f' "$name" "$@" >>"$STUB_LOG"
printf '\n' >>"$STUB_LOG"
case "$name $*" in
"aws lambda get-function"*) printf '%s\n' "https://awslambda-tasks.example/artifact.zip?signed" ;;
"aws ssm get-parameter"*) cat "$STUB_SETTINGS" ;;
"aws ec2 describe-tags"*) printf '%s\n' "$STUB_ARN" ;;
"curl "*api/token) printf 'imds-token' ;;
"curl "*instance-id) printf 'i-0abc123def4567890' ;;
"curl "*)
    while (($#)); do
        if [[ "$1" == -o ]]; then cp "$STUB_ARTIFACT" "$2"; fi
        shift
    done ;;
"buildkite-bootstrap "*) exit "${STUB_INSTALL_RC:-0}" ;;
"buildkite-agent --version") printf 'buildkite-agent version 3.87.0, build 5805\n' ;;
"nix --version") printf 'nix (Determinate Nix 3.6.2) 2.29.0\n' ;;
esac
"""


def run_component_step(
    tmp_path: Path, step: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """One step of the component, its absolute paths moved under tmp_path, commands stubbed."""
    root, stubs, src = tmp_path / "root", tmp_path / "stubs", tmp_path / "src"
    if not stubs.exists():
        stubs.mkdir()
        for name in ("aws", "curl", "buildkite-bootstrap", "buildkite-agent", "nix"):
            (stubs / name).write_text(COMPONENT_STUB, encoding="utf-8")
            (stubs / name).chmod(0o755)
        (stubs / "python3").symlink_to(sys.executable)
        shutil.make_archive(str(tmp_path / "artifact"), "zip", REPO / "functions", "autoscaler")
        with zipfile.ZipFile(tmp_path / "artifact.zip", "a") as archive:
            for path in (REPO / "userdata").iterdir():
                archive.write(path, f"userdata/{path.name}")
        (tmp_path / "settings.json").write_text(json.dumps(SETTINGS_JSON), encoding="utf-8")
    script = component_steps()[step]
    for variable, value in {
        "AWS::Region": "eu-west-1",
        "ScalerFunction": "bk-scaler",
        "ImageBuildSettings": "/bk/bs",
    }.items():
        script = script.replace("${" + variable + "}", value)
    script = script.replace("/var/tmp/buildkite-bake", str(src))
    script = script.replace("/usr/local/sbin/buildkite-bootstrap", str(stubs / "buildkite-bootstrap"))
    script = script.replace("-m autoscaler.bake", f"-m autoscaler.bake --root {root}")
    log = tmp_path / "calls.log"
    environment = {
        "PATH": f"{stubs}:/usr/bin:/bin",
        "STUB_LOG": str(log),
        "STUB_ARTIFACT": str(tmp_path / "artifact.zip"),
        "STUB_SETTINGS": str(tmp_path / "settings.json"),
        "STUB_ARN": ARN,
        **env,
    }
    result = subprocess.run(["bash", "-c", script], env=environment, capture_output=True, text=True, check=False)
    calls = [line.split("\x1f")[:-1] for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []
    log.unlink(missing_ok=True)
    return result, calls


def test_the_component_bakes_with_the_stock_install_step_then_marks_and_checks_the_image(tmp_path: Path) -> None:
    build, calls = run_component_step(tmp_path, "build/Install")

    assert build.returncode == 0, build.stderr
    commands = [" ".join(call[:3]) for call in calls]
    assert commands == [
        "aws lambda get-function",
        "curl -fsSL --proto",
        "aws ssm get-parameter",
        "buildkite-bootstrap install",
        *["nix --extra-experimental-features nix-command flakes"] * 2,
        "curl -fsS -X",
        "curl -fsS -H",
        "aws ec2 describe-tags",
        "buildkite-agent --version",
        "nix --version",
    ]
    root = tmp_path / "root"
    # The install step ran with the stock boot's files and the bake's settings in place.
    assert (root / "usr/local/sbin/buildkite-bootstrap").read_text() == instance_file(REPO / "userdata", "bootstrap.sh")
    assert (root / SETTINGS_PATH).is_file()
    assert "image_version=1.0.0/7" in (root / MARKER_PATH).read_text(encoding="ascii")

    validate, _ = run_component_step(tmp_path, "validate/NoSecrets")
    assert validate.returncode == 0, validate.stderr
    assert not (tmp_path / "src").exists()  # the artifact is not baked into the image


def test_a_failed_install_step_fails_the_bake_before_the_image_is_marked(tmp_path: Path) -> None:
    build, calls = run_component_step(tmp_path, "build/Install", STUB_INSTALL_RC="100")

    assert build.returncode == 100
    assert calls[-1][:2] == ["buildkite-bootstrap", "install"]
    assert not (tmp_path / "root" / MARKER_PATH).exists()


def test_a_secret_in_the_image_fails_the_validate_step(tmp_path: Path) -> None:
    run_component_step(tmp_path, "build/Install")
    plant(tmp_path / "root", "var/lib/buildkite-agent/.ssh/id_ed25519", "-----BEGIN OPENSSH PRIVATE KEY-----")

    validate, _ = run_component_step(tmp_path, "validate/NoSecrets")

    assert validate.returncode == 1
    assert "SECRET IN IMAGE: /var/lib/buildkite-agent/.ssh/id_ed25519 exists" in validate.stderr
