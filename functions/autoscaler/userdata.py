"""Renders the shared cloud-init user-data of an instance at launch.

The files in `userdata/` (the cloud-config template, the bootstrap script,
hooks and units) are embedded as they are; the only per-launch content is a
small `settings.env` of shell-quoted values that the bootstrap script
sources. Values are validated here, quoted for the shell with `shlex.quote`
and embedded in YAML as JSON strings (a JSON string of ASCII text is a valid
YAML double-quoted scalar), so no value can change the script or the YAML
structure. Secrets are never rendered, only the names of their SSM
parameters.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
import shlex
from pathlib import Path

from autoscaler.config import (
    AGENT_MAJOR_VERSION,
    ARCHITECTURES,
    MIN_IDLE_TIMEOUT_SECONDS,
    ROLES,
    ROOT_MODES,
    InstallSettings,
    QueueConfig,
    UserDataSettings,
)
from autoscaler.lifecycle import (
    AGENT_VERSION_TAG,
    BOOTSTRAP_COMPLETE,
    BOOTSTRAP_FAILED,
    BOOTSTRAP_POOLED,
    BOOTSTRAP_TAG,
    NIX_VERSION_TAG,
    ON_EXIT_STOP,
    ON_EXIT_TAG,
    READY_AT_TAG,
    STARTED_AT_TAG,
)

EC2_USER_DATA_LIMIT = 16384
TEMPLATE = "cloud-config.yaml.tmpl"
SETTINGS_FILE = "settings.env"

_PLACEHOLDER = re.compile(r"@@([A-Za-z0-9_-][A-Za-z0-9._/-]*)@@")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
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


class UserDataError(ValueError):
    """A value cannot be rendered, or the result is too big; names field and value."""


# A pure function of frozen (hashable) settings and files that do not change at
# run time: a warm Lambda, or the simulation's thousands of invocations, render
# each queue and role once instead of re-reading and re-compressing every minute.
@functools.lru_cache(maxsize=64)
def render_user_data(settings: UserDataSettings, queue: QueueConfig, role: str, fleet_name: str) -> bytes:
    """The user-data for one instance of `queue` with `role`, ready for RunInstances.

    Plain `#cloud-config` text when it fits EC2's limit, gzip otherwise
    (cloud-init detects and decompresses it).
    """
    values = _settings_values(settings, queue, role, fleet_name)
    text = _fill_template(userdata_dir(), settings_env(values))
    return _fit(text.encode("ascii"))


def _settings_values(settings: UserDataSettings, queue: QueueConfig, role: str, fleet_name: str) -> dict[str, str]:
    """The validated BK_* variables the bootstrap script reads, in file order."""
    _check("role", role, role in ROLES, f"one of {', '.join(ROLES)}")
    _check("queue.name", queue.name, bool(_NAME.fullmatch(queue.name)), "letters, digits, '.', '_' or '-'")
    # The bootstrap compares BK_ARCH with `uname -m`: an AMI of the wrong architecture fails
    # the bootstrap instead of joining (the configuration matched it to the instance types).
    _check("queue.architecture", queue.architecture, queue.architecture in ARCHITECTURES, " or ".join(ARCHITECTURES))
    _check_count("queue.agents_per_instance", queue.agents_per_instance, 1)
    _check_count("queue.idle_timeout_seconds", queue.idle_timeout_seconds, MIN_IDLE_TIMEOUT_SECONDS)
    _check_count("queue.max_uptime_seconds", queue.max_uptime_seconds, 0)
    for field in ("agent_token_parameter", "ssh_key_parameter", "signing_key_parameter"):
        _check_pattern(field, getattr(settings, field), _PARAMETER, "an SSM parameter name")
    _check_pattern("root_tmpfs_size", settings.root_tmpfs_size, _TMPFS_SIZE, "a share of RAM (75%) or a size (24g)")
    _check_count("min_free_space_gib", settings.min_free_space_gib, 0)
    return {
        "BK_QUEUE": queue.name,
        "BK_ROLE": role,
        **install_values(settings, fleet_name, queue.architecture),
        "BK_AGENT_TOKEN_PARAMETER": settings.agent_token_parameter,
        "BK_SSH_KEY_PARAMETER": settings.ssh_key_parameter,
        "BK_SIGNING_KEY_PARAMETER": settings.signing_key_parameter,
        "BK_AGENTS_PER_INSTANCE": str(queue.agents_per_instance),
        # Floor instances hold min_instances: 0 means no idle timeout.
        "BK_IDLE_TIMEOUT_SECONDS": "0" if role == "floor" else str(queue.idle_timeout_seconds),
        "BK_MAX_UPTIME_SECONDS": str(queue.max_uptime_seconds),
        "BK_ROOT_TMPFS_SIZE": settings.root_tmpfs_size,
        "BK_MIN_FREE_SPACE_GIB": str(settings.min_free_space_gib),
        "BK_BOOTSTRAP_TAG": BOOTSTRAP_TAG,
        "BK_READY_AT_TAG": READY_AT_TAG,
        "BK_AGENT_VERSION_TAG": AGENT_VERSION_TAG,
        "BK_NIX_VERSION_TAG": NIX_VERSION_TAG,
        "BK_BOOTSTRAP_COMPLETE": BOOTSTRAP_COMPLETE,
        "BK_BOOTSTRAP_FAILED": BOOTSTRAP_FAILED,
        "BK_BOOTSTRAP_POOLED": BOOTSTRAP_POOLED,
        "BK_ON_EXIT_TAG": ON_EXIT_TAG,
        "BK_ON_EXIT_STOP": ON_EXIT_STOP,
        "BK_STARTED_AT_TAG": STARTED_AT_TAG,
    }


def install_values(settings: InstallSettings, fleet_name: str, arch: str) -> dict[str, str]:
    """The validated install-time BK_* variables: what the stock boot and an image bake install with."""
    _check("fleet_name", fleet_name, bool(_NAME.fullmatch(fleet_name)), "letters, digits, '.', '_' or '-'")
    _check("arch", arch, arch in ARCHITECTURES, " or ".join(ARCHITECTURES))
    _check("root_mode", settings.root_mode, settings.root_mode in ROOT_MODES, f"one of {', '.join(ROOT_MODES)}")
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
        "BK_FLEET": fleet_name,
        "BK_REGION": settings.region,
        "BK_CACHE_BUCKET": settings.cache_bucket,
        "BK_CACHE_REGION": settings.cache_region,
        "BK_CACHE_PUBLIC_KEY": settings.cache_public_key,
        "BK_ROOT_MODE": settings.root_mode,
        "BK_NIX_DETERMINATE": "true" if settings.nix_determinate else "false",
        "BK_AGENT_VERSION": settings.agent_version,
        "BK_NIX_INSTALLER_VERSION": settings.nix_installer_version,
        "BK_NIX_TRUST_JOBS": "true" if settings.nix_trust_jobs else "false",
    }


def settings_env(values: dict[str, str], header: str = "Rendered by the autoscaler at launch") -> str:
    lines = [f"# {header}; names of secrets, never their values."]
    lines += [f"{name}={shlex.quote(value)}" for name, value in values.items()]
    return "\n".join(lines) + "\n"


def userdata_dir() -> Path:
    """Where the userdata/ files are, in the repository or in the Lambda artifact."""
    package = Path(__file__).resolve().parent
    # Lambda artifact: autoscaler/ and userdata/ side by side at its root.
    # Repository: functions/autoscaler/ and userdata/ at the top.
    for candidate in (package.parent / "userdata", package.parent.parent / "userdata"):
        if (candidate / TEMPLATE).is_file():
            return candidate
    raise UserDataError(f"userdata/{TEMPLATE} not found next to {package} or its parent")


def instance_file(directory: Path, name: str) -> str:
    """A file of userdata/ as the instance gets it, from the user-data or a bake alike:
    without its comment lines (the shebang stays), which would take a third of EC2's
    16 KB user-data limit. The files have no here-documents, so a line that starts with
    "#" is always a comment."""
    lines = (directory / name).read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(line for index, line in enumerate(lines) if not _is_comment(line, index))


def _is_comment(line: str, index: int) -> bool:
    return line.lstrip().startswith("#") and not (index == 0 and line.startswith("#!"))


def _fill_template(directory: Path, settings: str) -> str:
    def embed(match: re.Match[str]) -> str:
        name = match.group(1)
        content = settings if name == SETTINGS_FILE else instance_file(directory, name)
        return json.dumps(content, ensure_ascii=True)

    return _PLACEHOLDER.sub(embed, (directory / TEMPLATE).read_text(encoding="utf-8"))


def _fit(plain: bytes) -> bytes:
    if len(plain) <= EC2_USER_DATA_LIMIT:
        return plain
    # mtime=0: the same inputs give the same bytes at every launch.
    compressed = gzip.compress(plain, compresslevel=9, mtime=0)
    if len(compressed) > EC2_USER_DATA_LIMIT:
        raise UserDataError(
            f"user-data is {len(compressed)} bytes gzip-compressed ({len(plain)} plain), "
            f"over EC2's limit of {EC2_USER_DATA_LIMIT} bytes"
        )
    return compressed


def _check(field: str, value: object, ok: bool, expected: str) -> None:
    if not ok:
        raise UserDataError(f"user-data {field} must be {expected} (got {value!r})")


def _check_pattern(field: str, value: str, pattern: re.Pattern[str], expected: str) -> None:
    if not value:
        raise UserDataError(f"user-data {field} is required (got {value!r})")
    _check(field, value, bool(pattern.fullmatch(value)), expected)


def _check_count(field: str, value: int, minimum: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    _check(field, value, ok, f"an integer >= {minimum}")
