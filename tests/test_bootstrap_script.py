"""The instance's bootstrap, run for real under bash against a temporary root.

The files come from the rendered user-data, written where cloud-init would
write them (under BOOTSTRAP_ROOT). Commands that touch the system or the
network are stubs that log their argv; PATH holds only the stubs and a few
coreutils, so an unexpected command fails the test instead of running.
"""

from __future__ import annotations

import dataclasses
import gzip
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from tests.test_userdata_render import PUBLIC_KEY, SETTINGS

from autoscaler.config import QueueConfig, UserDataSettings
from autoscaler.userdata import render_user_data

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
)
STUBBED = ["curl", "aws", "apt-get", "apt-cache", "gpg", "systemctl", "uname", "usermod", "groupadd", "chgrp"]
STUBBED += ["chown", "id", "update-grub", "update-initramfs", "unzip", "sleep", "poweroff", "nix-installer", "nix"]
STUBBED += ["jq", "yq", "git", "git-lfs", "aws-installer"]

# One stub for every command (bash, for speed): logs its argv as one line of
# fields ending in \x1f, exits with the code of the first STUB_FAIL line
# ("prefix<TAB>code") that starts the call, and otherwise acts just enough
# for the script to go on.
STUB = r"""#!/bin/bash
name=${0##*/}
# One write per call: stubs in a pipeline run at the same time.
line=$(printf '%s\x1f' "$name" "$@")
printf '%s\n' "$line" >>"$STUB_LOG"
call="$name $*"
while IFS=$'\t' read -r prefix code; do
    if [[ -n "$prefix" && "$call" == "$prefix"* ]]; then exit "$code"; fi
done <<<"${STUB_FAIL:-}"
# What systemd does when the service's start timeout passes.
if [[ "$name" == "${STUB_TERM_PARENT_FROM:-}" ]]; then
    kill -TERM "$PPID"
fi
option() {
    local flag=$1
    shift
    while (($#)); do
        if [[ "$1" == "$flag" ]]; then printf '%s' "$2"; return; fi
        shift
    done
}
case "$name" in
uname) echo "$STUB_MACHINE" ;;
curl)
    if [[ " $* " == *" @- "* ]]; then
        cat >/dev/null
    fi
    case "${!#}" in
    */api/token) printf imds-session-token ;;
    */meta-data/instance-id) printf '%s' "$STUB_INSTANCE_ID" ;;
    */meta-data/tags/instance/*)
        # IMDS answers 404 (curl -f: exit 22) for a tag the instance does not have.
        [[ -n "${STUB_TAG_VALUE:-}" ]] || exit 22
        printf '%s' "$STUB_TAG_VALUE"
        ;;
    *install.determinate.systems*) printf '#!/bin/sh\nexec nix-installer "$@"\n' >"$(option -o "$@")" ;;
    *) echo "-----BEGIN PGP PUBLIC KEY BLOCK-----" ;;
    esac
    ;;
nix-installer)
    mkdir -p "$BOOTSTRAP_ROOT"/nix/var/nix/{daemon-socket,profiles/default/bin} "$BOOTSTRAP_ROOT/etc/nix"
    echo "# written by the installer" >"$BOOTSTRAP_ROOT/etc/nix/nix.custom.conf"
    ;;
gpg)
    if [[ " $* " == *" --show-keys "* ]]; then
        echo "pub:-:255:22:A79206696452D198:1:::-:::scESC::::::23::0:"
        echo "fpr:::::::::$STUB_FINGERPRINT:"
    else
        cat
    fi
    ;;
aws)
    if [[ "$1 $2" == "ssm get-parameter" ]]; then
        cat "$STUB_SSM_DIR$(option --name "$@")"
        echo
    fi
    ;;
apt-cache) printf '%s\n' "$STUB_MADISON" ;;
unzip)
    mkdir -p "$(option -d "$@")/aws"
    printf '#!/bin/sh\nexec aws-installer "$@"\n' >"$(option -d "$@")/aws/install"
    chmod +x "$(option -d "$@")/aws/install"
    ;;
esac
exit 0
"""


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


def make_settings(**changes: object) -> UserDataSettings:
    return dataclasses.replace(SETTINGS, **changes)


X86_QUEUE = QueueConfig(
    name="nixos-x86-aws",
    launch_template_id="lt-0123",
    instance_types=("m7i.4xlarge", "m6i.4xlarge"),
    subnet_ids=("subnet-1",),
    max_instances=4,
    agents_per_instance=5,
    idle_timeout_seconds=600,
    max_uptime_seconds=21600,
)


ARM_QUEUE = dataclasses.replace(X86_QUEUE, name="nixos-arm-aws", instance_types=("c7g.4xlarge",))


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    stub = tmp_path / "stub"
    stub.write_text(STUB)
    stub.chmod(0o755)
    for name in STUBBED:
        (directory / name).symlink_to(stub)
    for name in REAL_COMMANDS:
        (directory / name).symlink_to(shutil.which(name, path="/usr/bin:/bin"))
    ssm = tmp_path / "ssm"
    for name, value in SECRETS.items():
        (ssm / name.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (ssm / name.lstrip("/")).write_text(value)
    return directory


def stub_env(stubs: Path, root: Path, log: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": str(stubs),
        "LC_ALL": "C",
        "BOOTSTRAP_ROOT": str(root),
        "STUB_LOG": str(log),
        "STUB_SSM_DIR": str(stubs.parent / "ssm"),
        "STUB_INSTANCE_ID": INSTANCE_ID,
        "STUB_FINGERPRINT": FINGERPRINT,
        "STUB_MACHINE": "x86_64",
        **extra,
    }


def read_calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.split("\x1f")[:-1] for line in log.read_text().splitlines()]


def install_user_data(root: Path, user_data: bytes) -> None:
    """Write the cloud-config's files under root, as cloud-init would."""
    if user_data[:2] == b"\x1f\x8b":
        user_data = gzip.decompress(user_data)
    for entry in yaml.safe_load(user_data)["write_files"]:
        path = root / entry["path"].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(entry["content"])
        path.chmod(int(entry["permissions"], 8))


def boot(
    tmp_path: Path,
    stubs: Path,
    *,
    mode: str = "run",
    settings: UserDataSettings | None = None,
    queue: QueueConfig = X86_QUEUE,
    role: str = "burst",
    machine: str = "x86_64",
    fail: dict[str, int] | None = None,
    root_type: str = "overlay",
    madison: str = "",
    term_from: str = "",
) -> Run:
    root = tmp_path / "root"
    install_user_data(root, render_user_data(settings or make_settings(), queue, role, "ci-fleet"))
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/mounts").write_text(f"/dev/root /media/root-ro ext4 ro 0 0\noverlayroot / {root_type} rw 0 0\n")
    log = tmp_path / "calls.log"
    failures = "\n".join(f"{prefix}\t{code}" for prefix, code in (fail or {}).items())
    env = stub_env(
        stubs,
        root,
        log,
        STUB_MACHINE=machine,
        STUB_FAIL=failures,
        STUB_MADISON=madison,
        STUB_TERM_PARENT_FROM=term_from,
    )
    script = root / "usr/local/sbin/buildkite-bootstrap"
    result = subprocess.run(
        ["/bin/bash", str(script), mode], check=False, env=env, cwd=tmp_path, capture_output=True, text=True
    )
    return Run(result.returncode, result.stdout + result.stderr, read_calls(log), root)


def agent_config(run: Run) -> dict[str, str]:
    lines = run.read("/etc/buildkite-agent/buildkite-agent.cfg").splitlines()
    return dict(line.split("=", 1) for line in lines)


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


def test_floor_agent_never_idles_out_but_still_recycles(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs, role="floor")

    assert run.returncode == 0, run.console
    config = agent_config(run)
    assert "disconnect-after-idle-timeout" not in config
    assert config["disconnect-after-uptime"] == "21600"


def test_arm_queue_boots_on_arm(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs, queue=ARM_QUEUE, machine="aarch64", settings=make_settings(root_mode="ebs"))

    assert run.returncode == 0, run.console
    assert "arch=arm64,queue=nixos-arm-aws" in agent_config(run)["tags"]


def test_nix_uses_the_s3_cache_and_uploads_with_the_hook(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs)

    assert run.returncode == 0, run.console
    installer = next(call for call in run.calls if call[0] == "nix-installer")
    assert installer[1:4] == ["install", "linux", "--no-confirm"]
    assert "--determinate" in installer
    assert "trusted-users = root buildkite-agent @nix-users ubuntu" in installer
    conf = run.read("/etc/nix/nix.custom.conf")
    assert conf.startswith("# written by the installer\n")
    assert "extra-substituters = s3://fleet-nix-cache?region=eu-central-1\n" in conf
    assert (
        f"trusted-public-keys = cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY= {PUBLIC_KEY}\n" in conf
    )
    assert "post-build-hook = /etc/nix/upload-to-cache.sh\n" in conf
    assert "accept-flake-config = true\n" in conf
    assert "download-buffer-size = 1073741824\n" in conf
    key = run.root / "etc/nix/cache-priv-key.pem"
    assert key.read_text().strip() == SIGNING_KEY
    assert key.stat().st_mode & 0o777 == 0o600
    assert ["systemctl", "restart", "nix-daemon.service"] in run.calls

    hook = run.root / "etc/nix/upload-to-cache.sh"
    nix = run.root / "nix/var/nix/profiles/default/bin/nix"
    nix.symlink_to(stubs / "nix")
    env = stub_env(stubs, run.root, tmp_path / "hook.log", OUT_PATHS="/nix/store/aaa-x /nix/store/bbb-y")
    subprocess.run(["/bin/bash", str(hook)], env=env, check=True, capture_output=True)
    assert read_calls(tmp_path / "hook.log") == [
        [
            "nix",
            "copy",
            "--to",
            "s3://fleet-nix-cache?region=eu-central-1&secret-key=/etc/nix/cache-priv-key.pem",
            "/nix/store/aaa-x",
            "/nix/store/bbb-y",
        ]
    ]


def test_agent_gets_the_deploy_key_and_the_nix_environment(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs)

    assert run.returncode == 0, run.console
    key = run.root / "var/lib/buildkite-agent/.ssh/id_ed25519"
    assert key.read_text().strip() == SSH_KEY
    assert key.stat().st_mode & 0o777 == 0o600
    assert "StrictHostKeyChecking accept-new" in run.read("/var/lib/buildkite-agent/.ssh/config")
    environment = run.read("/etc/systemd/system/buildkite-agent.service.d/environment.conf")
    assert "Environment=PATH=/nix/var/nix/profiles/default/bin:" in environment
    assert 'Environment="NIX_CONFIG=eval-cache = false"' in environment
    lifecycle = run.read("/etc/systemd/system/buildkite-agent.service.d/lifecycle.conf")
    assert "ExecStopPost=/usr/local/lib/buildkite-bootstrap/agent-exited.sh" in lifecycle
    assert ["usermod", "-aG", "nix-users", "buildkite-agent"] in run.calls
    assert ["chgrp", "nix-users", f"{run.root}/nix/var/nix/daemon-socket"] in run.calls


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


def test_secrets_are_never_on_a_command_line_or_the_console(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs)

    assert run.returncode == 0, run.console
    fragments = ("FAKE_TOKEN", "FAKE-SSH-KEY", "FAKE-SIGNING-KEY", "imds-session-token")
    for fragment in fragments:
        assert not [call for call in run.calls if fragment in " ".join(call)], fragment
        assert fragment not in run.console


def test_pinned_agent_version_installs_that_build(tmp_path: Path, stubs: Path) -> None:
    madison = (
        " buildkite-agent | 3.88.1-5900 | https://apt.buildkite.com/buildkite-agent stable/main amd64 Packages\n"
        " buildkite-agent | 3.87.0-5805 | https://apt.buildkite.com/buildkite-agent stable/main amd64 Packages"
    )
    run = boot(tmp_path, stubs, settings=make_settings(agent_version="3.87.0"), madison=madison)

    assert run.returncode == 0, run.console
    installs = [call for call in run.calls if call[0] == "apt-get" and "install" in call]
    assert installs[-1][-1] == "buildkite-agent=3.87.0-5805"


@pytest.mark.parametrize(
    ("fail", "machine", "step", "code"),
    [
        ({"aws ssm get-parameter": 254}, "x86_64", "read_secrets", 254),
        ({"nix-installer": 1}, "x86_64", "install_nix", 1),
        ({}, "aarch64", "check_arch", 1),
        ({"systemctl is-active": 3}, "x86_64", "start_agent", 1),
    ],
    ids=["ssm-read", "nix-install", "arch-mismatch", "agent-not-running"],
)
def test_failed_step_tags_failed_and_powers_off(
    tmp_path: Path, stubs: Path, fail: dict[str, int], machine: str, step: str, code: int
) -> None:
    run = boot(tmp_path, stubs, fail=fail, machine=machine)

    assert run.returncode == code
    assert f"FAILED step={step} exit={code}" in run.console
    assert run.aws_calls()[-1][-1] == "Key=buildkite-autoscaler:bootstrap,Value=failed"
    assert run.calls[-1] == ["systemctl", "--no-block", "poweroff"]
    assert run.console.count("FAILED") == 1
    assert run.calls.count(["systemctl", "--no-block", "poweroff"]) == 1
    steps = re.findall(r"buildkite-bootstrap: step (\w+)", run.console)
    assert steps[-1] == step
    assert not (run.root / "var/lib/buildkite-bootstrap-complete").exists()
    assert not any("Value=complete" in " ".join(call) for call in run.calls)


def test_bootstrap_stopped_by_its_timeout_reports_the_step_and_powers_off(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs, term_from="sleep")

    assert run.returncode == 143
    assert "FAILED step=start_agent exit=143" in run.console
    assert run.aws_calls()[-1][-1] == "Key=buildkite-autoscaler:bootstrap,Value=failed"
    assert run.calls[-1] == ["systemctl", "--no-block", "poweroff"]


def test_failed_step_stops_before_the_next_one(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs, fail={"nix-installer": 1})

    assert not [call for call in run.calls if call[0] in ("apt-get", "usermod", "chown")]
    assert not (run.root / "etc/buildkite-agent/buildkite-agent.cfg").exists()


def test_overlayroot_instance_refuses_to_bootstrap_on_the_disk_root(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs, root_type="ext4")

    assert "FAILED step=check_root_filesystem exit=1" in run.console
    assert run.calls[-1] == ["systemctl", "--no-block", "poweroff"]
    assert not [call for call in run.calls if call[:2] == ["aws", "ssm"]]


def test_odd_values_reach_the_instance_as_data(tmp_path: Path, stubs: Path) -> None:
    odd_key = "q'\"$(touch${IFS}pwned)`touch${IFS}pwned2`:" + "Q" * 43 + "="
    run = boot(tmp_path, stubs, settings=make_settings(cache_public_key=odd_key))

    assert run.returncode == 0, run.console
    assert f" {odd_key}\n" in run.read("/etc/nix/nix.custom.conf")
    assert not list(tmp_path.rglob("pwned*"))


def test_prepare_with_overlayroot_sets_up_the_tmpfs_root_and_asks_for_a_reboot(tmp_path: Path, stubs: Path) -> None:
    grub = tmp_path / "root/etc/default/grub.d/40-force-partuuid.cfg"
    grub.parent.mkdir(parents=True)
    grub.write_text("GRUB_FORCE_PARTUUID=1234-abcd\n")

    run = boot(tmp_path, stubs, mode="prepare")

    assert run.returncode == 0, run.console
    assert run.read("/etc/overlayroot.local.conf") == 'overlayroot="tmpfs:tmpfs_size=75%"\n'
    assert grub.read_text() == "#GRUB_FORCE_PARTUUID=1234-abcd\n"
    assert ["update-grub"] in run.calls
    assert ["update-initramfs", "-u"] in run.calls
    assert ["systemctl", "enable", "buildkite-bootstrap.service"] in run.calls
    assert (run.root / "run/buildkite-bootstrap/reboot-requested").exists()
    assert not [call for call in run.calls if call[:2] == ["systemctl", "start"]]


def test_prepare_with_ebs_root_starts_the_bootstrap_without_reboot(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs, mode="prepare", settings=make_settings(root_mode="ebs"))

    assert run.returncode == 0, run.console
    assert ["systemctl", "start", "--no-block", "buildkite-bootstrap.service"] in run.calls
    assert not (run.root / "run/buildkite-bootstrap/reboot-requested").exists()
    assert not (run.root / "etc/overlayroot.local.conf").exists()
    assert not [call for call in run.calls if call[0] in ("update-grub", "update-initramfs")]


def test_prepare_on_the_wrong_architecture_powers_off_instead_of_rebooting(tmp_path: Path, stubs: Path) -> None:
    run = boot(tmp_path, stubs, mode="prepare", machine="aarch64")

    assert "FAILED step=check_arch exit=1" in run.console
    assert run.calls[-1] == ["systemctl", "--no-block", "poweroff"]
    assert not (run.root / "run/buildkite-bootstrap/reboot-requested").exists()


@pytest.mark.parametrize(
    ("result", "powers_off"),
    [("success", True), ("exit-code", False), ("signal", False)],
)
def test_instance_powers_off_only_when_the_agent_exits_for_good(
    tmp_path: Path, stubs: Path, result: str, powers_off: bool
) -> None:
    install_user_data(tmp_path, render_user_data(make_settings(), X86_QUEUE, "burst", "ci-fleet"))
    log = tmp_path / "exit.log"
    env = stub_env(stubs, tmp_path, log, SERVICE_RESULT=result)
    script = tmp_path / "usr/local/lib/buildkite-bootstrap/agent-exited.sh"
    subprocess.run(["/bin/bash", str(script)], env=env, check=True, capture_output=True)

    assert (["systemctl", "--no-block", "poweroff"] in read_calls(log)) is powers_off


def test_prepare_with_a_package_missing_fails_before_changing_the_root(tmp_path: Path, stubs: Path) -> None:
    (stubs / "git-lfs").unlink()

    run = boot(tmp_path, stubs, mode="prepare")

    assert "FAILED step=check_packages exit=1" in run.console
    assert "git-lfs is missing" in run.console
    assert run.calls[-1] == ["systemctl", "--no-block", "poweroff"]
    assert not (run.root / "etc/overlayroot.local.conf").exists()


def test_prepare_installs_the_aws_cli_for_the_machine(tmp_path: Path, stubs: Path) -> None:
    (stubs / "aws").unlink()

    run = boot(tmp_path, stubs, mode="prepare", machine="aarch64", queue=ARM_QUEUE)

    assert run.returncode == 0, run.console
    downloads = [call for call in run.calls if call[0] == "curl" and call[-1].endswith(".zip")]
    assert downloads[0][-1] == "https://awscli.amazonaws.com/awscli-exe-linux-aarch64.zip"
    installer = next(call for call in run.calls if call[0] == "aws-installer")
    assert installer[1:] == [
        "--update",
        "--install-dir",
        f"{run.root}/usr/local/aws-cli",
        "--bin-dir",
        f"{run.root}/usr/local/bin",
    ]
    assert not (run.root / "run/buildkite-bootstrap/awscli").exists()
