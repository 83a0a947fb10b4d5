"""Every value an agent instance receives, validated here and nowhere else.

The scaler's renderer (autoscaler.userdata) and the image bake (instance.bake)
both build the instance's `settings.env` from these functions, so a value is
refused with the same message at a launch and at a bake. Each value is checked
against a plain pattern and quoted with `shlex.quote`: none can change the
script that sources the file. Secrets are never values here, only the names of
their SSM parameters.

Standard library only: the bake runs this with a bare python3.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import MISSING, dataclass, fields
from typing import Any

# The buildkite-agent major version the product is written against: its config keys,
# flags and signals. "3" installs the newest 3.x; an exact 3.x.y pins one release.
# Agent 4 changed the cancel settings; see docs/instance-boot.md, "Agent versions".
AGENT_MAJOR_VERSION = "3"
# The nix-installer release every new agent installs; newer ones only by choice.
DEFAULT_NIX_INSTALLER_VERSION = "v3.21.2"
# The agent's idle clock starts with the agent, before the bootstrap's ~20 s of
# checks and its CreateTags (a VM needed ~33 s for both, up to ~19 s an AWS call
# on a busy host). Shorter than this, an agent could idle out mid-bootstrap.
MIN_IDLE_TIMEOUT_SECONDS = 120
ROOT_MODES = ("overlayroot", "ebs")
# The bootstrap compares BK_ARCH with `uname -m` (aarch64 is arm64 to it).
ARCHITECTURES = ("x86_64", "arm64")
ROLES = ("floor", "burst", "pool")

# A fleet or queue name; the Lambdas' configuration checks its names with it too.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_REGION = re.compile(r"[a-z]{2,4}(-[a-z]+)+-[0-9]{1,2}")
# SSM parameter names (letters, digits, . _ - /) or a shared parameter's ARN.
_PARAMETER = re.compile(r"[A-Za-z0-9_./:-]{1,2048}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# Nix public key "name:base64": printable ASCII without spaces, which would
# split the nix.conf value. Quotes and "$" are allowed; they are data.
_NIX_PUBLIC_KEY = re.compile(r"[!-9;-~]{1,200}:[A-Za-z0-9+/]{40,100}={0,2}")
# The major version alone (its newest release) or an exact release of it (3.87.0).
_AGENT_VERSION = re.compile(re.escape(AGENT_MAJOR_VERSION) + r"(\.[0-9]+\.[0-9]+([.+~-][A-Za-z0-9.+~-]{1,40})?)?")
# tmpfs size= : a share of RAM (1-100%) or an absolute size (k, m, g suffix).
_TMPFS_SIZE = re.compile(r"([1-9][0-9]?|100)%|[1-9][0-9]{0,6}[kmgKMG]")
_INSTALLER_VERSION = re.compile(r"v[0-9]+\.[0-9]+\.[0-9]+")
# A flake reference or a store path; the bake's shell passes each to `nix build` as one word.
_WARM_REF = re.compile(r"[A-Za-z0-9_.:/#?=&+@-]+")


class SettingsError(ValueError):
    """A value the instance cannot be given; the message names the field and the value."""


@dataclass(frozen=True)
class InstallSettings:
    """What the install step needs, at a stock boot and in an image bake alike:
    no secret and nothing of one instance."""

    region: str
    cache_bucket: str
    cache_region: str
    cache_public_key: str
    # ebs by default: see docs/instance-boot.md, "Root mode and build space".
    root_mode: str = "ebs"
    nix_determinate: bool = True
    agent_version: str = AGENT_MAJOR_VERSION
    nix_installer_version: str = DEFAULT_NIX_INSTALLER_VERSION
    # Opt-in: jobs become trusted Nix users, which lets them run commands as root.
    nix_trust_jobs: bool = False


@dataclass(frozen=True)
class Launch:
    """What one launched instance gets beyond the install values: its queue and role,
    its limits, and the names of the SSM parameters it reads its secrets from."""

    queue: str
    role: str
    arch: str
    agents_per_instance: int
    idle_timeout_seconds: int
    max_uptime_seconds: int
    agent_token_parameter: str
    ssh_key_parameter: str
    signing_key_parameter: str
    root_tmpfs_size: str
    min_free_space_gib: int


_INSTALL_FIELDS = {field.name: field.default for field in fields(InstallSettings)}


def install_values(settings: InstallSettings, fleet: str, arch: str) -> dict[str, str]:
    """The validated install-time BK_* variables: what the stock boot and an image bake install with."""
    _check_pattern("fleet", fleet, NAME, "letters, digits, '.', '_' or '-'")
    _check("arch", arch, arch in ARCHITECTURES, " or ".join(ARCHITECTURES))
    check_root_mode(settings.root_mode)
    _check_pattern("region", settings.region, _REGION, "an AWS region such as us-west-2")
    _check_pattern("cache_region", settings.cache_region, _REGION, "an AWS region such as us-west-2")
    _check_pattern("cache_bucket", settings.cache_bucket, _BUCKET, "an S3 bucket name")
    _check_pattern("cache_public_key", settings.cache_public_key, _NIX_PUBLIC_KEY, "a Nix public key 'name:base64'")
    _check_pattern(
        "agent_version",
        settings.agent_version,
        _AGENT_VERSION,
        f"buildkite-agent {AGENT_MAJOR_VERSION}: {AGENT_MAJOR_VERSION} for its newest release or an exact "
        f"{AGENT_MAJOR_VERSION}.x.y (another major needs the move in docs/instance-boot.md, 'Agent versions')",
    )
    _check_pattern(
        "nix_installer_version", settings.nix_installer_version, _INSTALLER_VERSION, "a release tag such as v3.21.2"
    )
    return {
        "BK_ARCH": arch,
        "BK_FLEET": fleet,
        "BK_REGION": settings.region,
        "BK_CACHE_BUCKET": settings.cache_bucket,
        "BK_CACHE_REGION": settings.cache_region,
        "BK_CACHE_PUBLIC_KEY": settings.cache_public_key,
        "BK_ROOT_MODE": settings.root_mode,
        "BK_NIX_DETERMINATE": _flag("nix_determinate", settings.nix_determinate),
        "BK_AGENT_VERSION": settings.agent_version,
        "BK_NIX_INSTALLER_VERSION": settings.nix_installer_version,
        "BK_NIX_TRUST_JOBS": _flag("nix_trust_jobs", settings.nix_trust_jobs),
    }


def launch_values(settings: InstallSettings, launch: Launch, fleet: str) -> dict[str, str]:
    """The validated BK_* variables of one launched instance, in file order."""
    _check("role", launch.role, launch.role in ROLES, f"one of {', '.join(ROLES)}")
    _check_pattern("queue.name", launch.queue, NAME, "letters, digits, '.', '_' or '-'")
    _check_count("queue.agents_per_instance", launch.agents_per_instance, 1)
    _check_count("queue.idle_timeout_seconds", launch.idle_timeout_seconds, MIN_IDLE_TIMEOUT_SECONDS)
    _check_count("queue.max_uptime_seconds", launch.max_uptime_seconds, 0)
    for field in ("agent_token_parameter", "ssh_key_parameter", "signing_key_parameter"):
        _check_pattern(field, getattr(launch, field), _PARAMETER, "an SSM parameter name")
    _check_pattern("root_tmpfs_size", launch.root_tmpfs_size, _TMPFS_SIZE, "a share of RAM (75%) or a size (24g)")
    _check_count("min_free_space_gib", launch.min_free_space_gib, 0)
    return {
        "BK_QUEUE": launch.queue,
        "BK_ROLE": launch.role,
        **install_values(settings, fleet, launch.arch),
        "BK_AGENT_TOKEN_PARAMETER": launch.agent_token_parameter,
        "BK_SSH_KEY_PARAMETER": launch.ssh_key_parameter,
        "BK_SIGNING_KEY_PARAMETER": launch.signing_key_parameter,
        "BK_AGENTS_PER_INSTANCE": str(launch.agents_per_instance),
        # Floor instances hold min_instances: 0 means no idle timeout.
        "BK_IDLE_TIMEOUT_SECONDS": "0" if launch.role == "floor" else str(launch.idle_timeout_seconds),
        "BK_MAX_UPTIME_SECONDS": str(launch.max_uptime_seconds),
        "BK_ROOT_TMPFS_SIZE": launch.root_tmpfs_size,
        "BK_MIN_FREE_SPACE_GIB": str(launch.min_free_space_gib),
    }


def bake_values(text: str, arch: str) -> dict[str, str]:
    """The validated BK_* variables of an image bake, from its settings JSON (the stack's
    ImageBuildSettings parameter): the install values and the references to warm."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise SettingsError(f"build settings must be a JSON object ({error.msg} at char {error.pos})") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"build settings must be a JSON object (got {type(raw).__name__})")
    # An empty string is a template parameter left empty: the default, as in the Lambda's environment.
    given = {key: value for key, value in raw.items() if key in _INSTALL_FIELDS and value != ""}
    required = {key: "" for key, default in _INSTALL_FIELDS.items() if default is MISSING}
    settings = InstallSettings(**{**required, **given})
    return {
        **install_values(settings, raw.get("fleet", ""), arch),
        "BK_WARM_NIX_PATHS": " ".join(_warm_refs(raw.get("warm_nix_paths", ""))),
    }


def settings_env(values: dict[str, str], header: str) -> str:
    """settings.env, which the instance's scripts source: one shell-quoted assignment a line."""
    lines = [f"# {header}; names of secrets, never their values."]
    lines += [f"{name}={shlex.quote(value)}" for name, value in values.items()]
    return "\n".join(lines) + "\n"


def check_root_mode(value: object) -> str:
    """ROOT_MODE; public for the simulation, which takes it as a setting of its own."""
    _check("root_mode", value, value in ROOT_MODES, f"one of {', '.join(ROOT_MODES)}")
    return str(value)


def _warm_refs(value: object) -> list[str]:
    _check("warm_nix_paths", value, isinstance(value, str), "a string of space-separated references")
    refs = str(value).split()
    for ref in refs:
        _check("warm_nix_paths", ref, bool(_WARM_REF.fullmatch(ref)), "flake references or store paths")
    return refs


def _flag(field: str, value: object) -> str:
    _check(field, value, isinstance(value, bool), "true or false")
    return "true" if value else "false"


def _check(field: str, value: object, ok: bool, expected: str) -> None:
    if not ok:
        raise SettingsError(f"{field} must be {expected} (got {value!r})")


def _check_pattern(field: str, value: Any, pattern: re.Pattern[str], expected: str) -> None:
    if value is None or value == "":
        raise SettingsError(f"{field} is required (got {value!r})")
    _check(field, value, isinstance(value, str) and bool(pattern.fullmatch(value)), expected)


def _check_count(field: str, value: object, minimum: int) -> None:
    # bool is an int in Python; `true` for a count is a mistake, not 1.
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    _check(field, value, ok, f"an integer >= {minimum}")
