"""The image bake's own steps, run on the Image Builder build instance (not in a Lambda).

The component fetches the deployed scaler's artifact (this package and
`userdata/`) and runs, as root, with Ubuntu's python3 and no dependencies:

    python3 -m autoscaler.bake install-files --settings S --arch A
        userdata/ files where the cloud-config writes them, and a settings.env
        of install-time values; then the component runs
        `buildkite-bootstrap install`, the stock boot's install step
    python3 -m autoscaler.bake warm --settings S     the warm Nix store
    python3 -m autoscaler.bake mark --image-arn ARN  the image's marker, and the build
        instance's /etc/machine-id emptied (the last step of the build phase)
    python3 -m autoscaler.bake check-secrets         fails the bake on a secret

Every path is under --root (default /), so tests run it against a temporary
directory with stub commands on PATH.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoscaler.config import AGENT_MAJOR_VERSION, DEFAULT_NIX_INSTALLER_VERSION, ROOT_MODES, InstallSettings
from autoscaler.userdata import TEMPLATE, install_values, instance_file, settings_env, userdata_dir

SETTINGS_PATH = "etc/buildkite-bootstrap/settings.env"
# Its presence tells the one user-data that it booted a baked image.
MARKER_PATH = "etc/buildkite-bootstrap/image"
MACHINE_ID_PATH = "etc/machine-id"
NIX = "/nix/var/nix/profiles/default/bin/nix"

# One write_files entry of the cloud-config template: path, permissions, file.
_WRITE_FILE = re.compile(
    r'- path: (\S+)\n\s+permissions: "(0[0-7]{3})"\n\s+content: @@([A-Za-z0-9_-][A-Za-z0-9._/-]*)@@'
)
_MACHINE_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
_WARM_REF = re.compile(r"[A-Za-z0-9_.:/#?=&+@-]+")
_IMAGE_ARN = re.compile(r"arn:[a-z-]+:imagebuilder:[a-z0-9-]+:[0-9]{12}:image/[^/]+/([0-9.]+)/([0-9]+)")

# Where the bootstrap puts secrets at boot: none may exist in an image.
SECRET_PATHS = (
    "etc/nix/cache-priv-key.pem",
    "var/lib/buildkite-agent/.ssh/id_ed25519",
    # The bootstrap's work directory may remain after an install; only its secrets matter.
    "run/buildkite-bootstrap/agent-token",
    "run/buildkite-bootstrap/ssh-key",
    "run/buildkite-bootstrap/signing-key",
    "root/.aws/credentials",
)
# What the bake and the install step write, and home directories, searched for key material.
SCANNED_DIRS = (
    "etc/nix",
    "etc/buildkite-agent",
    "etc/buildkite-bootstrap",
    "usr/local/lib/buildkite-bootstrap",
    "var/lib/buildkite-agent",
    "root",
    "home",
)
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
# A Nix signing key is name:base64 of 64 bytes; its public key is 32 bytes.
_NIX_SECRET_KEY = re.compile(r"[A-Za-z0-9._-]+:[A-Za-z0-9+/]{86}==")
# The package's own config has this placeholder; any other token was written by someone.
_AGENT_TOKEN = re.compile(r'^\s*token\s*=\s*"?([^"\s]*)"?\s*$', re.MULTILINE)
_PLACEHOLDER_TOKENS = ("", "xxx")
_SCAN_LIMIT = 1 << 20
# Nix's client cache (root's, after `warm`) keeps narinfo signatures: public, and of the
# same shape as a signing key (name:base64 of 64 bytes).
_NIX_CLIENT_CACHE = ".cache/nix/"


class BakeError(ValueError):
    """A bake setting is missing or invalid; names the field and the value."""


@dataclass(frozen=True)
class ImageFile:
    path: str  # absolute, as in the cloud-config
    mode: int
    source: str  # file name in userdata/


@dataclass(frozen=True, kw_only=True)
class BakeSettings(InstallSettings):
    """The ImageBuildSettings parameter: install-time values, no names of secrets."""

    fleet: str
    warm_nix_paths: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, text: str) -> BakeSettings:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise BakeError(f"build settings must be a JSON object ({error.msg} at char {error.pos})") from None
        if not isinstance(raw, dict):
            raise BakeError(f"build settings must be a JSON object (got {type(raw).__name__})")
        strings = {key: _string(raw, key) for key in ("fleet", "region", "cache_bucket", "cache_region")}
        determinate, trust_jobs = _bool(raw, "nix_determinate", True), _bool(raw, "nix_trust_jobs", False)
        root_mode = raw.get("root_mode", "ebs")
        if root_mode not in ROOT_MODES:
            raise BakeError(f"build settings root_mode must be one of {', '.join(ROOT_MODES)} (got {root_mode!r})")
        warm = tuple(str(raw.get("warm_nix_paths", "")).split())
        for ref in warm:
            if not _WARM_REF.fullmatch(ref):
                raise BakeError(f"build settings warm_nix_paths has an odd reference (got {ref!r})")
        return cls(
            **strings,
            cache_public_key=_string(raw, "cache_public_key"),
            root_mode=root_mode,
            nix_determinate=determinate,
            agent_version=str(raw.get("agent_version") or AGENT_MAJOR_VERSION),
            nix_installer_version=str(raw.get("nix_installer_version") or DEFAULT_NIX_INSTALLER_VERSION),
            nix_trust_jobs=trust_jobs,
            warm_nix_paths=warm,
        )


def _bool(raw: dict[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise BakeError(f"build settings {key} must be true or false (got {value!r})")
    return value


def _string(raw: dict[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise BakeError(f"build settings {key} must be a non-empty string (got {value!r})")
    return value


def image_files(directory: Path) -> list[ImageFile]:
    """The files the cloud-config writes, from its template: the bake writes the same ones."""
    template = (directory / TEMPLATE).read_text(encoding="utf-8")
    return [
        ImageFile(path, int(mode, 8), source)
        for path, mode, source in _WRITE_FILE.findall(template)
        if (directory / source).is_file()
    ]


def machine_arch(machine: str) -> str:
    try:
        return _MACHINE_ARCH[machine]
    except KeyError:
        raise BakeError(f"arch must be x86_64 or aarch64 (got {machine!r})") from None


def bake_settings_env(settings: BakeSettings, arch: str) -> str:
    """settings.env of a bake: the install-time values, validated and quoted as at launch."""
    values = install_values(settings, settings.fleet, machine_arch(arch))
    return settings_env(values, header="Written by the image bake: install-time values only")


def install_files(root: Path, settings: BakeSettings, arch: str, directory: Path | None = None) -> list[Path]:
    source = directory or userdata_dir()
    # Validated before anything is written: a bad setting leaves nothing half-installed.
    settings_text = bake_settings_env(settings, arch)
    written = []
    for item in image_files(source):
        target = root / item.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(instance_file(source, item.source), encoding="utf-8")
        target.chmod(item.mode)
        written.append(target)
    settings_file = root / SETTINGS_PATH
    settings_file.parent.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(settings_text, encoding="ascii")
    settings_file.chmod(0o644)
    return [*written, settings_file]


def warm_commands(settings: BakeSettings, nix: str = NIX) -> list[list[str]]:
    """One `nix build` per reference: substituted from the caches into the image's store.

    No post-build hook: the bake has no signing key, so nothing it builds is uploaded.
    """
    flags = ["--extra-experimental-features", "nix-command flakes", "--option", "post-build-hook", ""]
    return [[nix, *flags, "build", "--no-link", ref] for ref in settings.warm_nix_paths]


def marker(image_arn: str, agent_version_output: str, nix_version_output: str) -> str:
    """The image's marker: key=value lines, read by the user-data and by operators."""
    match = _IMAGE_ARN.fullmatch(image_arn.strip())
    if not match:
        raise BakeError(f"image_arn must be an Image Builder image build ARN (got {image_arn!r})")
    agent = re.search(r"version ([0-9][^,\s]*)", agent_version_output)
    nix_words = nix_version_output.split()
    if not agent or not nix_words:
        raise BakeError(f"agent and nix versions not found (got {agent_version_output!r}, {nix_version_output!r})")
    lines = {
        "image_version": f"{match.group(1)}/{match.group(2)}",
        "image_arn": image_arn.strip(),
        "agent_version": agent.group(1),
        "nix_version": nix_words[-1],
    }
    return "".join(f"{key}={value}\n" for key, value in lines.items())


def empty_machine_id(root: Path) -> None:
    """Every instance of the image gets its own machine id, which systemd writes at a boot
    that finds the file empty; otherwise all of them share the build instance's (journald,
    DHCP client ids, dbus). Truncated, not deleted: some units fail on a missing file, and
    systemd would take a boot without it for a first boot."""
    path = root / MACHINE_ID_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def find_secrets(root: Path) -> list[str]:
    """What in the image under `root` is, or looks like, a secret; empty when clean."""
    found = [f"/{path} exists" for path in SECRET_PATHS if (root / path).exists()]
    config = root / "etc/buildkite-agent/buildkite-agent.cfg"
    if config.is_file():
        tokens = _AGENT_TOKEN.findall(config.read_text(encoding="utf-8", errors="replace"))
        if any(token not in _PLACEHOLDER_TOKENS for token in tokens):
            found.append(f"/{config.relative_to(root)} holds an agent token")
    for path in _scanned_files(root):
        text = path.read_text(encoding="utf-8", errors="replace")
        if _PRIVATE_KEY.search(text):
            found.append(f"/{path.relative_to(root)} holds a private key")
        elif _NIX_SECRET_KEY.search(text):
            found.append(f"/{path.relative_to(root)} holds a Nix signing key")
    return found


def _scanned_files(root: Path) -> Iterator[Path]:
    for directory in SCANNED_DIRS:
        base = root / directory
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if _NIX_CLIENT_CACHE in path.relative_to(root).as_posix():
                continue
            if path.is_file() and not path.is_symlink() and path.stat().st_size <= _SCAN_LIMIT:
                yield path


def _nix() -> str:
    # The installer puts nix on login shells' PATH only; the component's shell is not one.
    return shutil.which("nix") or NIX


def _version_output(command: Sequence[str]) -> str:
    # Fixed programs; the arguments are constants.
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout  # noqa: S603


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m autoscaler.bake", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/"))
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install-files")
    install.add_argument("--settings", type=Path, required=True)
    install.add_argument("--arch", required=True)
    warm = commands.add_parser("warm")
    warm.add_argument("--settings", type=Path, required=True)
    mark = commands.add_parser("mark")
    mark.add_argument("--image-arn", required=True)
    commands.add_parser("check-secrets")
    args = parser.parse_args(argv)

    if args.command == "install-files":
        settings = BakeSettings.from_json(args.settings.read_text(encoding="utf-8"))
        for path in install_files(args.root, settings, args.arch):
            print(f"bake: wrote {path}")
    elif args.command == "warm":
        settings = BakeSettings.from_json(args.settings.read_text(encoding="utf-8"))
        for command in warm_commands(settings, _nix()):
            print(f"bake: warming {command[-1]}", flush=True)
            # References were checked against a plain pattern; no shell is involved.
            subprocess.run(command, check=True)  # noqa: S603
    elif args.command == "mark":
        agent = _version_output([shutil.which("buildkite-agent") or "/usr/bin/buildkite-agent", "--version"])
        nix = _version_output([_nix(), "--version"])
        target = args.root / MARKER_PATH
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(marker(args.image_arn, agent, nix), encoding="ascii")
        target.chmod(0o644)
        print(f"bake: marked {target}:\n{target.read_text(encoding='ascii')}", end="")
        empty_machine_id(args.root)
        print(f"bake: emptied {args.root / MACHINE_ID_PATH}; each instance writes its own at its first boot")
    else:
        found = find_secrets(args.root)
        for finding in found:
            print(f"bake: SECRET IN IMAGE: {finding}", file=sys.stderr)
        if found:
            return 1
        print("bake: no secrets found")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BakeError as error:
        print(f"bake: {error}", file=sys.stderr)
        sys.exit(2)
