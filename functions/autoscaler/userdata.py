"""Renders the shared cloud-init user-data of an instance at launch.

The files in `userdata/` (the cloud-config template, the bootstrap script,
hooks and units) are embedded as they are (`instance.files`); the only
per-launch content is a small `settings.env` of shell-quoted values that the
bootstrap script sources, validated by `instance.settings`. Each file is
embedded in YAML as a JSON string (a JSON string of ASCII text is a valid YAML
double-quoted scalar), so no value can change the script or the YAML
structure. Secrets are never rendered, only the names of their SSM parameters.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
from pathlib import Path

from autoscaler.config import QueueConfig, UserDataSettings
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
from instance.files import PLACEHOLDER, TEMPLATE, file_content, userdata_dir
from instance.settings import Launch, SettingsError, launch_values, settings_env

EC2_USER_DATA_LIMIT = 16384
HEADER = "Rendered by the autoscaler at launch"

# The scaler's tag names and values, which the bootstrap writes back: constants of this
# package, not settings, so there is nothing to validate.
_LIFECYCLE_VALUES = {
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


# A pure function of frozen (hashable) settings and files that do not change at
# run time: a warm Lambda, or the simulation's thousands of invocations, render
# each queue and role once instead of re-reading and re-compressing every minute.
@functools.lru_cache(maxsize=64)
def render_user_data(settings: UserDataSettings, queue: QueueConfig, role: str, fleet_name: str) -> bytes:
    """The user-data for one instance of `queue` with `role`, ready for RunInstances.

    Plain `#cloud-config` text when it fits EC2's limit, gzip otherwise
    (cloud-init detects and decompresses it). A value the instance cannot be
    given raises SettingsError.
    """
    values = {**launch_values(settings, _launch(settings, queue, role), fleet_name), **_LIFECYCLE_VALUES}
    text = _fill_template(userdata_dir(), settings_env(values, HEADER))
    return _fit(text.encode("ascii"))


def _launch(settings: UserDataSettings, queue: QueueConfig, role: str) -> Launch:
    return Launch(
        queue=queue.name,
        role=role,
        # The bootstrap compares BK_ARCH with `uname -m`: an AMI of the wrong architecture fails
        # the bootstrap instead of joining (the configuration matched it to the instance types).
        arch=queue.architecture,
        agents_per_instance=queue.agents_per_instance,
        idle_timeout_seconds=queue.idle_timeout_seconds,
        max_uptime_seconds=queue.max_uptime_seconds,
        agent_token_parameter=settings.agent_token_parameter,
        ssh_key_parameter=settings.ssh_key_parameter,
        signing_key_parameter=settings.signing_key_parameter,
        root_tmpfs_size=settings.root_tmpfs_size,
        min_free_space_gib=settings.min_free_space_gib,
    )


def _fill_template(directory: Path, settings: str) -> str:
    def embed(match: re.Match[str]) -> str:
        return json.dumps(file_content(directory, match.group(1), settings), ensure_ascii=True)

    return PLACEHOLDER.sub(embed, (directory / TEMPLATE).read_text(encoding="utf-8"))


def _fit(plain: bytes) -> bytes:
    if len(plain) <= EC2_USER_DATA_LIMIT:
        return plain
    # mtime=0: the same inputs give the same bytes at every launch.
    compressed = gzip.compress(plain, compresslevel=9, mtime=0)
    if len(compressed) > EC2_USER_DATA_LIMIT:
        # A SettingsError like any value the instance cannot be given: the invocation fails at its start.
        raise SettingsError(
            f"user-data is {len(compressed)} bytes gzip-compressed ({len(plain)} plain), "
            f"over EC2's limit of {EC2_USER_DATA_LIMIT} bytes"
        )
    return compressed
