"""The instance scripts under stubs, against a temporary root.

The files come from the rendered user-data, written where cloud-init would
write them (under BOOTSTRAP_ROOT). Commands that touch the system or the
network are stubs (tests/stubs/command-stub.sh) that log their argv; PATH
holds only the stubs, a few coreutils and what the scripts install, so an
unexpected command fails the test instead of running.
"""

from __future__ import annotations

import dataclasses
import gzip
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from tests.support.userdata import PUBLIC_KEY, SETTINGS

from autoscaler.config import QueueConfig, UserDataSettings
from autoscaler.userdata import render_user_data

STUB = Path(__file__).resolve().parent.parent / "stubs" / "command-stub.sh"
INSTANCE_ID = "i-0abc123def4567890"
TOKEN = "bkct_FAKE_TOKEN_7f3a9c"
SSH_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nFAKE-SSH-KEY-b64e1d\n-----END OPENSSH PRIVATE KEY-----"
SIGNING_KEY = "fleet-cache-1:FAKE-SIGNING-KEY-0d9c2e"
SECRETS = {
    "/bk/agent-token": TOKEN,
    "/bk/ssh-key": SSH_KEY,
    "/bk/nix-signing-key": SIGNING_KEY,
}
FINGERPRINT = "32A37959C2FA5C3C99EFBC32A79206696452D198"
REAL_COMMANDS = (
    "bash",
    "sh",
    "cat",
    "chmod",
    "mkdir",
    "rm",
    "touch",
    "date",
    "sed",
    "awk",
    "grep",
    "install",
    "dirname",
    "mktemp",
    "mv",
    "timeout",
    "env",
    "stat",
    "find",
    "readlink",
    "tr",
    "ln",
    "cp",
)
STUBBED = ["curl", "aws", "apt-get", "apt-cache", "gpg", "systemctl", "uname", "usermod", "groupadd", "chgrp"]
STUBBED += ["chown", "id", "update-grub", "update-initramfs", "unzip", "sleep", "poweroff", "nix-installer", "nix"]
STUBBED += ["jq", "yq", "git", "git-lfs", "aws-installer", "mount", "df", "logger", "buildkite-agent", "sudo"]
IMDS = "http://169.254.169.254/latest/"


@dataclass
class Run:
    returncode: int
    console: str
    calls: list[list[str]]
    root: Path

    def aws_calls(self) -> list[list[str]]:
        return [call for call in self.calls if call[0] == "aws"]

    def read(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text()

    def steps(self) -> list[str]:
        return re.findall(r"buildkite-bootstrap: step (\w+)", self.console)


def make_settings(**changes: object) -> UserDataSettings:
    return dataclasses.replace(SETTINGS, **changes)


X86_QUEUE = QueueConfig(
    name="nixos-x86-aws",
    architecture="x86_64",
    launch_template_id="lt-0123",
    instance_types=("m7i.4xlarge", "m6i.4xlarge"),
    subnet_ids=("subnet-1",),
    max_instances=4,
    agents_per_instance=5,
    idle_timeout_seconds=600,
    max_uptime_seconds=21600,
)


ARM_QUEUE = dataclasses.replace(X86_QUEUE, name="nixos-arm-aws", architecture="arm64", instance_types=("c7g.4xlarge",))
OVERLAYROOT = make_settings(root_mode="overlayroot")
# What the image bake writes before `buildkite-bootstrap bake`: install-time settings only.
BAKE_SETTINGS = """BK_ARCH=x86_64
BK_FLEET=ci-fleet
BK_REGION=us-west-2
BK_ROOT_MODE={mode}
BK_NIX_INSTALLER_VERSION=v3.21.2
BK_NIX_DETERMINATE=true
BK_NIX_TRUST_JOBS=false
BK_AGENT_VERSION=3.87.0
BK_CACHE_BUCKET=fleet-nix-cache
BK_CACHE_REGION=eu-central-1
BK_CACHE_PUBLIC_KEY={key}
BK_WARM_NIX_PATHS='nixpkgs#hello'
"""
# What the bake's marker holds, with the stubs' versions.
MARKER = "image_version=1.0.0/7\nimage_arn=arn:aws:imagebuilder:us-west-2:123456789012:image/a/1.0.0/7\n"
MARKER += "agent_version=3.87.0\nnix_version=2.31.2\n"
MADISON = " buildkite-agent | 3.87.0-5805 | https://apt.buildkite.com/buildkite-agent stable/main amd64 Packages"


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    for name in STUBBED:
        (directory / name).symlink_to(STUB)
    for name in REAL_COMMANDS:
        (directory / name).symlink_to(shutil.which(name, path="/usr/bin:/bin"))
    ssm = tmp_path / "ssm"
    for name, value in SECRETS.items():
        (ssm / name.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (ssm / name.lstrip("/")).write_text(value)
    return directory


def stub_env(stubs: Path, root: Path, log: Path, **extra: str) -> dict[str, str]:
    env = {
        # And what the scripts install, where a real PATH finds it.
        "PATH": f"{stubs}:{root}/usr/local/bin",
        "LC_ALL": "C",
        "BOOTSTRAP_ROOT": str(root),
        "STUB_LOG": str(log),
        "STUB_SSM_DIR": str(stubs.parent / "ssm"),
        "STUB_INSTANCE_ID": INSTANCE_ID,
        "STUB_FINGERPRINT": FINGERPRINT,
        "STUB_MACHINE": "x86_64",
        **extra,
    }
    write_stub_settings(stubs, env)
    return env


def write_stub_settings(stubs: Path, env: dict[str, str]) -> None:
    """The stubs' settings where they find them when a script has cleaned its environment."""
    lines = [f"export {name}={shlex.quote(value)}" for name, value in env.items() if name.startswith("STUB_")]
    (stubs.parent / "stub.env").write_text("\n".join(lines) + "\n")


def read_calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.split("\x1f")[:-1] for line in log.read_text().splitlines()]


def install_user_data(root: Path, user_data: bytes) -> None:
    """Write the cloud-config's files under root, as cloud-init would, on a root that has
    the /run every booted machine has."""
    (root / "run").mkdir(parents=True, exist_ok=True)
    if user_data[:2] == b"\x1f\x8b":
        user_data = gzip.decompress(user_data)
    for entry in yaml.safe_load(user_data)["write_files"]:
        path = root / entry["path"].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(entry["content"])
        path.chmod(int(entry["permissions"], 8))


Fail = int | tuple[int, int, str]


def stub_failures(fail: dict[str, Fail] | None) -> str:
    lines = []
    for prefix, rule in (fail or {}).items():
        fields = (rule,) if isinstance(rule, int) else rule
        lines.append("\t".join([prefix, *map(str, fields)]))
    return "\n".join(lines)


def run_script(
    tmp_path: Path,
    stubs: Path,
    mode: str,
    *,
    machine: str = "x86_64",
    fail: dict[str, Fail] | None = None,
    root_type: str = "ext4",
    madison: str = MADISON,
    term_from: str = "",
    **extra: str,
) -> Run:
    """One run of `buildkite-bootstrap MODE` on the root under tmp_path, with its own call log."""
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc/mounts").write_text(f"/dev/root /media/root-ro ext4 ro 0 0\noverlayroot / {root_type} rw 0 0\n")
    log = tmp_path / f"calls-{mode}.log"
    log.unlink(missing_ok=True)
    env = stub_env(
        stubs,
        root,
        log,
        STUB_MACHINE=machine,
        STUB_FAIL=stub_failures(fail),
        STUB_MADISON=madison,
        STUB_TERM_PARENT_FROM=term_from,
        **extra,
    )
    script = root / "usr/local/sbin/buildkite-bootstrap"
    result = subprocess.run(
        ["/bin/bash", str(script), mode], check=False, env=env, cwd=tmp_path, capture_output=True, text=True
    )
    return Run(result.returncode, result.stdout + result.stderr, read_calls(log), root)


def boot(
    tmp_path: Path,
    stubs: Path,
    *,
    mode: str = "run",
    settings: UserDataSettings | None = None,
    queue: QueueConfig = X86_QUEUE,
    role: str = "burst",
    root_type: str | None = None,
    **options: object,
) -> Run:
    """cloud-init writes the rendered user-data, then one mode of the script runs."""
    settings = settings or make_settings()
    install_user_data(tmp_path / "root", render_user_data(settings, queue, role, "ci-fleet"))
    if root_type is None:
        root_type = "overlay" if settings.root_mode == "overlayroot" and mode == "run" else "ext4"
    return run_script(tmp_path, stubs, mode, root_type=root_type, **options)  # type: ignore[arg-type]


def reboot(root: Path) -> None:
    """What a reboot leaves: /run is gone (and, with overlayroot, every write of the boot)."""
    shutil.rmtree(root / "run", ignore_errors=True)


def bake(tmp_path: Path, stubs: Path, mode: str = "ebs", **options: object) -> Run:
    """The image component's work on a stock machine with no AWS CLI: the userdata files in
    place, its install-time settings, then `buildkite-bootstrap bake`."""
    root = tmp_path / "root"
    install_user_data(root, render_user_data(make_settings(root_mode=mode), X86_QUEUE, "burst", "ci-fleet"))
    (root / "etc/buildkite-bootstrap/settings.env").write_text(BAKE_SETTINGS.format(mode=mode, key=PUBLIC_KEY))
    (stubs / "aws").unlink(missing_ok=True)
    run = run_script(tmp_path, stubs, "bake", madison=MADISON, **options)  # type: ignore[arg-type]
    (stubs / "aws").unlink(missing_ok=True)
    (stubs / "aws").symlink_to(STUB)
    return run


def tags_of(call: list[str]) -> dict[str, str]:
    """The tags of an `aws ec2 create-tags` call, from its Key=...,Value=... arguments."""
    pairs = [re.fullmatch(r"Key=([^,]+),Value=(.*)", arg) for arg in call[call.index("--tags") + 1 :]]
    return {match.group(1): match.group(2) for match in pairs if match}


def version_tags(run: Run) -> tuple[str, str]:
    tags = tags_of(run.aws_calls()[-1])
    return tags["buildkite-autoscaler:agent-version"], tags["buildkite-autoscaler:nix-version"]


def agent_config(run: Run) -> dict[str, str]:
    lines = run.read("/etc/buildkite-agent/buildkite-agent.cfg").splitlines()
    return dict(line.split("=", 1) for line in lines)


def downloads(run: Run) -> list[str]:
    """Every URL fetched other than the instance metadata service."""
    return [call[-1] for call in run.calls if call[0] == "curl" and not call[-1].startswith(IMDS)]


def apt_changes(run: Run) -> list[list[str]]:
    return [call for call in run.calls if call[0] == "apt-get" and ("install" in call or "update" in call)]
