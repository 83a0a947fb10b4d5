"""One step of the instance scripts, alone: lib/common.sh and one steps/*.sh file, straight
from the repository (no rendering), sourced by `bash -c` under the bootstrap's shell options,
then one function called.

PATH holds only the stubs of the commands the test names (symlinks to
tests/stubs/command-stub.sh, which logs each call) and the real coreutils it names, so a step
that starts running another command fails its test. BOOTSTRAP_ROOT is tmp_path/root: every
path the scripts write is under it.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.support.instance import INSTANCE_ID, STUB, Fail, read_calls, stub_failures, write_stub_settings
from tests.support.userdata import PUBLIC_KEY, REPO

from autoscaler import lifecycle

LIBRARY = REPO / "userdata/lib/common.sh"
STEPS = REPO / "userdata/steps"
# What the library's own helpers run (write_file, write_secret, apt_get's error file).
BASE_COMMANDS = ("cat", "mkdir", "chmod", "dirname", "rm")
# A launch's settings.env, as the autoscaler renders it (tests change what they need).
SETTINGS = {
    "BK_QUEUE": "nixos-x86-aws",
    "BK_ROLE": "burst",
    "BK_ARCH": "x86_64",
    "BK_FLEET": "ci-fleet",
    "BK_REGION": "us-west-2",
    "BK_ROOT_MODE": "ebs",
    "BK_NIX_INSTALLER_VERSION": "v3.21.2",
    "BK_NIX_DETERMINATE": "true",
    "BK_NIX_TRUST_JOBS": "false",
    "BK_AGENT_VERSION": "3",
    "BK_CACHE_BUCKET": "fleet-nix-cache",
    "BK_CACHE_REGION": "eu-central-1",
    "BK_CACHE_PUBLIC_KEY": PUBLIC_KEY,
    "BK_AGENT_TOKEN_PARAMETER": "/bk/agent-token",
    "BK_SSH_KEY_PARAMETER": "/bk/ssh-key",
    "BK_SIGNING_KEY_PARAMETER": "/bk/nix-signing-key",
    "BK_AGENTS_PER_INSTANCE": "5",
    "BK_IDLE_TIMEOUT_SECONDS": "600",
    "BK_MAX_UPTIME_SECONDS": "21600",
    "BK_ROOT_TMPFS_SIZE": "75%",
    "BK_MIN_FREE_SPACE_GIB": "20",
    "BK_BOOTSTRAP_TAG": lifecycle.BOOTSTRAP_TAG,
    "BK_READY_AT_TAG": lifecycle.READY_AT_TAG,
    "BK_AGENT_VERSION_TAG": lifecycle.AGENT_VERSION_TAG,
    "BK_NIX_VERSION_TAG": lifecycle.NIX_VERSION_TAG,
    "BK_BOOTSTRAP_COMPLETE": lifecycle.BOOTSTRAP_COMPLETE,
    "BK_BOOTSTRAP_FAILED": lifecycle.BOOTSTRAP_FAILED,
    "BK_BOOTSTRAP_POOLED": lifecycle.BOOTSTRAP_POOLED,
    "BK_ON_EXIT_TAG": lifecycle.ON_EXIT_TAG,
    "BK_ON_EXIT_STOP": lifecycle.ON_EXIT_STOP,
    "BK_STARTED_AT_TAG": lifecycle.STARTED_AT_TAG,
}


@dataclass
class StepRun:
    returncode: int
    stdout: str
    stderr: str
    calls: list[list[str]]
    root: Path
    log: Path

    @property
    def console(self) -> str:
        return self.stdout + self.stderr

    def calls_of(self, name: str) -> list[list[str]]:
        return [call for call in self.calls if call[0] == name]

    def path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def read(self, path: str) -> str:
        return self.path(path).read_text()

    def mode(self, path: str) -> int:
        return self.path(path).stat().st_mode & 0o7777

    def stdin_of_curl(self) -> str:
        """What the stubbed curl read on stdin (its `-H @-` headers)."""
        stdin = self.log.with_name(self.log.name + ".stdin")
        return stdin.read_text() if stdin.exists() else ""


def root_of(tmp_path: Path) -> Path:
    """The BOOTSTRAP_ROOT of run_step(tmp_path, ...): a test may put files there first."""
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    return root


def put(root: Path, path: str, text: str = "", mode: int = 0o644) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)
    return target


def install_nix_profile(root: Path) -> None:
    """The installer's nix ($NIX), as the stub."""
    nix = root / "nix/var/nix/profiles/default/bin/nix"
    nix.parent.mkdir(parents=True, exist_ok=True)
    nix.unlink(missing_ok=True)
    nix.symlink_to(STUB)


def run_step(
    tmp_path: Path,
    step_file: str | None,
    script: str,
    *,
    commands: Iterable[str] = (),
    real: Iterable[str] = (),
    env: dict[str, str] | None = None,
    fail: dict[str, Fail] | None = None,
) -> StepRun:
    """Source lib/common.sh and steps/STEP_FILE.sh (none: the library alone), then run SCRIPT.

    commands: the stubbed commands on PATH; real: real commands on PATH besides BASE_COMMANDS;
    env: the settings and stub variables (STUB_*); fail: STUB_FAIL rules, as run_script's.
    """
    root = root_of(tmp_path)
    stubs = tmp_path / "bin"
    shutil.rmtree(stubs, ignore_errors=True)
    stubs.mkdir()
    for name in commands:
        (stubs / name).symlink_to(STUB)
    for name in {*BASE_COMMANDS, *real} - set(commands):
        (stubs / name).symlink_to(shutil.which(name, path="/usr/bin:/bin"))
    log = tmp_path / "calls.log"
    for old in tmp_path.glob("calls.log*"):
        old.unlink()
    variables = {
        "PATH": str(stubs),
        "LC_ALL": "C",
        "BOOTSTRAP_ROOT": str(root),
        "STUB_LOG": str(log),
        "STUB_FAIL": stub_failures(fail),
        "STUB_INSTANCE_ID": INSTANCE_ID,
        "STUB_MACHINE": "x86_64",
        **(env or {}),
    }
    write_stub_settings(stubs, variables)
    sources = [LIBRARY] + ([STEPS / f"{step_file}.sh"] if step_file else [])
    text = "set -Eeuo pipefail\n" + "".join(f". {shlex.quote(str(path))}\n" for path in sources) + script
    result = subprocess.run(
        ["/bin/bash", "-c", text], check=False, env=variables, cwd=tmp_path, capture_output=True, text=True
    )
    return StepRun(result.returncode, result.stdout, result.stderr, read_calls(log), root, log)


def settings(**changes: str) -> dict[str, str]:
    """SETTINGS with CHANGES; a change to "" unsets the setting."""
    values = {**SETTINGS, **changes}
    return {name: value for name, value in values.items() if value != ""}


def tags(call: list[str]) -> dict[str, str]:
    """The Key=...,Value=... tags of an `aws ec2 create-tags` call."""
    pairs = [arg.split(",Value=", 1) for arg in call[call.index("--tags") + 1 :] if arg.startswith("Key=")]
    return {key.removeprefix("Key="): value for key, value in pairs}
