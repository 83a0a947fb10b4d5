"""userdata/steps/secrets.sh alone: secrets from SSM into root's files, and the image's secret scan."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from tests.support.instance import SECRETS, SIGNING_KEY, SSH_KEY, TOKEN
from tests.support.steps import put, root_of, run_step, settings

WORK = "/run/buildkite-bootstrap"


def ssm(tmp_path: Path, values: dict[str, str] = SECRETS) -> dict[str, str]:
    directory = tmp_path / "ssm"
    for name, value in values.items():
        put(directory, name, value)
    return settings(STUB_SSM_DIR=str(directory))


def test_read_secrets_writes_each_value_where_only_root_reads_it(tmp_path: Path) -> None:
    run = run_step(tmp_path, "secrets", "read_secrets", commands=["aws"], env=ssm(tmp_path))

    assert run.returncode == 0, run.console
    assert run.mode(WORK) == 0o700
    for name, value in [("agent-token", TOKEN), ("ssh-key", SSH_KEY), ("signing-key", SIGNING_KEY)]:
        assert run.read(f"{WORK}/{name}") == value + "\n"
        assert run.mode(f"{WORK}/{name}") == 0o600
    assert [call[call.index("--name") + 1] for call in run.calls] == list(SECRETS)
    assert all("--with-decryption" in call for call in run.calls)
    assert not any(value in arg for value in SECRETS.values() for call in run.calls for arg in call)


def test_read_secrets_refuses_an_empty_parameter(tmp_path: Path) -> None:
    # The CLI prints nothing and exits 0.
    empty = "aws ssm get-parameter --region us-west-2 --with-decryption --name /bk/ssh-key"
    run = run_step(tmp_path, "secrets", "read_secrets", commands=["aws"], env=ssm(tmp_path), fail={empty: (0, 99)})

    assert run.returncode == 1
    assert "SSM parameter /bk/ssh-key is empty" in run.stderr
    assert len(run.calls) == 2


def test_the_keys_are_installed_for_the_uploader_and_the_agent_alone(tmp_path: Path) -> None:
    root = root_of(tmp_path)
    put(root, f"{WORK}/signing-key", SIGNING_KEY, mode=0o600)
    put(root, f"{WORK}/ssh-key", SSH_KEY, mode=0o600)
    run = run_step(tmp_path, "secrets", "install_signing_key\ninstall_ssh_key", commands=["chown"])

    assert run.returncode == 0, run.console
    assert run.read("/etc/nix/cache-priv-key.pem") == SIGNING_KEY
    assert run.mode("/etc/nix/cache-priv-key.pem") == 0o600
    ssh = "/var/lib/buildkite-agent/.ssh"
    assert run.read(f"{ssh}/id_ed25519") == SSH_KEY
    assert (run.mode(ssh), run.mode(f"{ssh}/id_ed25519"), run.mode(f"{ssh}/config")) == (0o700, 0o600, 0o644)
    assert "IdentityFile ~/.ssh/id_ed25519" in run.read(f"{ssh}/config")
    assert run.calls == [["chown", "-R", "buildkite-agent:buildkite-agent", f"{run.root}{ssh}"]]


NIX_SECRET = "fleet-cache-1:" + base64.b64encode(bytes(range(64))).decode()
NIX_PUBLIC = "fleet-cache-1:" + base64.b64encode(bytes(range(32))).decode()
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
FOUND = [
    ("/etc/nix/cache-priv-key.pem", "k", "exists"),
    ("/var/lib/buildkite-agent/.ssh/id_ed25519", "k", "exists"),
    (f"{WORK}/agent-token", "t", "exists"),
    (f"{WORK}/ssh-key", "k", "exists"),
    (f"{WORK}/signing-key", "k", "exists"),
    ("/root/.aws/credentials", "[default]\n", "exists"),
    ("/var/lib/buildkite-bootstrap-complete", "", "exists"),
    ("/etc/buildkite-agent/buildkite-agent.cfg", f'token="{TOKEN}"\n', "holds an agent token"),
    ("/etc/buildkite-agent/buildkite-agent.cfg", "  token = abc\n", "holds an agent token"),
    ("/home/ubuntu/.ssh/id_rsa", PRIVATE_KEY, "holds key material"),
    ("/root/notes.txt", "-----BEGIN RSA PRIVATE KEY-----\n", "holds key material"),
    ("/etc/nix/secret", NIX_SECRET + "\n", "holds key material"),
    ("/etc/buildkite-bootstrap/settings.env", f"KEY={NIX_SECRET}\n", "holds key material"),
]


@pytest.mark.parametrize(("path", "text", "what"), FOUND)
def test_find_secrets_names_each_secret_and_instance_state(tmp_path: Path, path: str, text: str, what: str) -> None:
    put(root_of(tmp_path), path, text)
    run = run_step(tmp_path, "secrets", "find_secrets", real=["grep", "find", "sed"])

    assert run.returncode == 0, run.console
    assert run.stdout == f"{run.root}{path} {what}\n"


NOT_FOUND = [
    ("/etc/buildkite-agent/buildkite-agent.cfg", 'name="%hostname-%spawn"\ntoken="xxx"\n'),
    ("/etc/buildkite-agent/buildkite-agent.cfg", "# token=abc\ntoken=\n"),
    ("/etc/nix/nix.custom.conf", f"trusted-public-keys = {NIX_PUBLIC}\n"),
    ("/root/.cache/nix/binary-cache-v6.sqlite", f"Sig: {NIX_SECRET}\n"),
    ("/home/ubuntu/.ssh/id_ed25519.pub", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 ubuntu@host\n"),
    # Outside the scanned directories: the scan is not of the whole disk.
    ("/usr/share/doc/example.pem", PRIVATE_KEY),
]


@pytest.mark.parametrize(("path", "text"), NOT_FOUND)
def test_find_secrets_passes_what_is_no_secret(tmp_path: Path, path: str, text: str) -> None:
    put(root_of(tmp_path), path, text)
    run = run_step(tmp_path, "secrets", "find_secrets", real=["grep", "find", "sed"])

    assert (run.returncode, run.stdout) == (0, ""), run.console


def test_check_no_secrets_refuses_a_disk_with_secrets_naming_each(tmp_path: Path) -> None:
    put(root_of(tmp_path), "/etc/nix/cache-priv-key.pem", NIX_SECRET)
    put(root_of(tmp_path), "/home/ubuntu/key", PRIVATE_KEY)
    run = run_step(tmp_path, "secrets", "check_no_secrets", real=["grep", "find", "sed"])

    assert run.returncode == 1
    assert "secrets or instance state on this disk, refusing to go on: " in run.stderr
    assert f"{run.root}/etc/nix/cache-priv-key.pem exists; " in run.stderr
    assert f"{run.root}/etc/nix/cache-priv-key.pem holds key material; " in run.stderr
    assert f"{run.root}/home/ubuntu/key holds key material" in run.stderr


def test_check_no_secrets_passes_an_empty_disk(tmp_path: Path) -> None:
    run = run_step(tmp_path, "secrets", "check_no_secrets", real=["grep", "find", "sed"])

    assert run.returncode == 0, run.console
    assert run.calls == []
