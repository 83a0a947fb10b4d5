"""Settings of both Lambdas, read once from the environment and validated.

Every error names the field and the value, so a bad deployment fails at the
start of the invocation with a message an operator can act on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoscaler.schedules import Schedule, ScheduleError, parse_schedule

DEFAULT_ENDPOINT = "https://agent.buildkite.com/v3"
DEFAULT_BOOTSTRAP_TIMEOUT = 1200
DEFAULT_READY_GRACE = 60
DEFAULT_REAP_CAP = 20
# A week: a stopped pool instance older than this is replaced by a fresh one.
DEFAULT_POOL_MAX_AGE = 7 * 24 * 3600
ROOT_MODES = ("overlayroot", "ebs")
ROLES = ("floor", "burst", "pool")
ON_DEMAND = "on-demand"
SPOT = "spot"
CAPACITY_TYPES = (ON_DEMAND, SPOT)

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names field and value."""


@dataclass(frozen=True)
class QueueConfig:
    name: str
    launch_template_id: str
    instance_types: tuple[str, ...]
    subnet_ids: tuple[str, ...]
    max_instances: int
    min_instances: int = 0
    agents_per_instance: int = 5
    include_waiting: bool = False
    idle_timeout_seconds: int = 600
    max_uptime_seconds: int = 21600
    # Stopped, pre-booted instances kept ready to start (see autoscaler.pool).
    warm_pool_size: int = 0
    # Ceiling of pool instances not in use (stopped, stopping or warming up);
    # None: the largest warm_pool_size of the queue and its schedules.
    max_pool_instances: int | None = None
    schedules: tuple[Schedule, ...] = ()

    @property
    def pool_ceiling(self) -> int:
        if self.max_pool_instances is not None:
            return self.max_pool_instances
        return max([self.warm_pool_size] + [s.warm_pool_size or 0 for s in self.schedules])

    @property
    def has_pool(self) -> bool:
        return self.pool_ceiling > 0

    # `spot`: launch spot first, spread over every type and subnet; with
    # on_demand_fallback, on-demand in the same poll when no spot is found.
    capacity_type: str = ON_DEMAND
    on_demand_fallback: bool = True

    @property
    def markets(self) -> tuple[str, ...]:
        """The markets a launch tries, in order."""
        if self.capacity_type == ON_DEMAND:
            return (ON_DEMAND,)
        return (SPOT, ON_DEMAND) if self.on_demand_fallback else (SPOT,)


@dataclass(frozen=True)
class UserDataSettings:
    """Deployment-wide values rendered into every instance's user-data.

    Only names of secrets live here, never their values.
    """

    region: str
    agent_token_parameter: str
    ssh_key_parameter: str
    signing_key_parameter: str
    cache_bucket: str
    cache_region: str
    cache_public_key: str
    root_mode: str = "overlayroot"
    nix_determinate: bool = True
    agent_version: str = ""


@dataclass(frozen=True)
class ScalerSettings:
    fleet_name: str
    queues: tuple[QueueConfig, ...]
    agent_token_parameter: str
    endpoint: str
    bootstrap_timeout_seconds: int
    ready_grace_seconds: int
    dry_run: bool
    user_data: UserDataSettings

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ScalerSettings:
        region = _required(env, "AWS_REGION")
        token_parameter = _required(env, "BUILDKITE_AGENT_TOKEN_PARAMETER")
        user_data = UserDataSettings(
            region=region,
            agent_token_parameter=token_parameter,
            ssh_key_parameter=_required(env, "SSH_KEY_PARAMETER"),
            signing_key_parameter=_required(env, "NIX_SIGNING_KEY_PARAMETER"),
            cache_bucket=_required(env, "NIX_CACHE_BUCKET"),
            cache_region=env.get("NIX_CACHE_REGION") or region,
            cache_public_key=_required(env, "NIX_CACHE_PUBLIC_KEY"),
            root_mode=_choice(env, "ROOT_MODE", ROOT_MODES, "overlayroot"),
            nix_determinate=_env_bool(env, "NIX_DETERMINATE", True),
            agent_version=env.get("BUILDKITE_AGENT_VERSION", ""),
        )
        endpoint = env.get("BUILDKITE_AGENT_ENDPOINT") or DEFAULT_ENDPOINT
        if not endpoint.startswith(("https://", "http://")):
            raise ConfigError(f"BUILDKITE_AGENT_ENDPOINT must be an http(s) URL (got {endpoint!r})")
        return cls(
            fleet_name=_fleet_name(env),
            queues=parse_queues(_required(env, "QUEUES")),
            agent_token_parameter=token_parameter,
            endpoint=endpoint.rstrip("/"),
            bootstrap_timeout_seconds=_env_int(env, "BOOTSTRAP_TIMEOUT_SECONDS", DEFAULT_BOOTSTRAP_TIMEOUT, 60),
            ready_grace_seconds=_env_int(env, "READY_GRACE_SECONDS", DEFAULT_READY_GRACE, 0),
            dry_run=_env_bool(env, "DRY_RUN", False),
            user_data=user_data,
        )


@dataclass(frozen=True)
class ReaperSettings:
    fleet_name: str
    bootstrap_timeout_seconds: int
    max_terminations: int
    dry_run: bool
    # The queues' pool sizes; without them (QUEUES unset) the reaper leaves
    # stopped pool instances alone.
    queues: tuple[QueueConfig, ...] = ()
    pool_max_age_seconds: int = DEFAULT_POOL_MAX_AGE

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ReaperSettings:
        return cls(
            fleet_name=_fleet_name(env),
            bootstrap_timeout_seconds=_env_int(env, "BOOTSTRAP_TIMEOUT_SECONDS", DEFAULT_BOOTSTRAP_TIMEOUT, 60),
            max_terminations=_env_int(env, "REAPER_MAX_TERMINATIONS", DEFAULT_REAP_CAP, 1),
            dry_run=_env_bool(env, "DRY_RUN", False),
            queues=parse_queues(env["QUEUES"]) if env.get("QUEUES", "").strip() else (),
            pool_max_age_seconds=_env_int(env, "POOL_MAX_AGE_SECONDS", DEFAULT_POOL_MAX_AGE, 3600),
        )


def parse_queues(text: str) -> tuple[QueueConfig, ...]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"QUEUES must be a JSON array ({error.msg} at char {error.pos})") from None
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"QUEUES must be a non-empty JSON array (got {_short(raw)})")
    queues = tuple(_queue(f"QUEUES[{index}]", item) for index, item in enumerate(raw))
    seen: set[str] = set()
    for index, queue in enumerate(queues):
        if queue.name in seen:
            raise ConfigError(f"QUEUES[{index}].name is a duplicate (got {queue.name!r})")
        seen.add(queue.name)
    return queues


_QUEUE_FIELDS = {
    "name",
    "launch_template_id",
    "instance_types",
    "subnet_ids",
    "min_instances",
    "max_instances",
    "agents_per_instance",
    "include_waiting",
    "idle_timeout_seconds",
    "max_uptime_seconds",
    "warm_pool_size",
    "max_pool_instances",
    "schedules",
    "capacity_type",
    "on_demand_fallback",
}


def _queue(where: str, raw: Any) -> QueueConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a JSON object (got {_short(raw)})")
    unknown = sorted(set(raw) - _QUEUE_FIELDS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]} is not a known queue setting (got {_short(raw[unknown[0]])})")
    name = _string(where, raw, "name")
    if not _QUEUE_NAME.match(name):
        raise ConfigError(f"{where}.name must be letters, digits, '.', '_' or '-' (got {name!r})")
    defaults = QueueConfig(name, "", (), (), 0)
    queue = QueueConfig(
        name=name,
        launch_template_id=_string(where, raw, "launch_template_id"),
        instance_types=_string_list(where, raw, "instance_types"),
        subnet_ids=_string_list(where, raw, "subnet_ids"),
        max_instances=_int(where, raw, "max_instances", None, 1),
        min_instances=_int(where, raw, "min_instances", defaults.min_instances, 0),
        agents_per_instance=_int(where, raw, "agents_per_instance", defaults.agents_per_instance, 1),
        include_waiting=_bool(where, raw, "include_waiting", defaults.include_waiting),
        # An idle timeout of 0 means "never idle out": burst instances would
        # then run forever, so it is refused rather than defaulted.
        idle_timeout_seconds=_int(where, raw, "idle_timeout_seconds", defaults.idle_timeout_seconds, 1),
        max_uptime_seconds=_int(where, raw, "max_uptime_seconds", defaults.max_uptime_seconds, 0),
        warm_pool_size=_int(where, raw, "warm_pool_size", defaults.warm_pool_size, 0),
        # null or absent: the largest pool size of the queue and its schedules.
        max_pool_instances=None
        if raw.get("max_pool_instances") is None
        else _int(where, raw, "max_pool_instances", 0, 0),
        schedules=_schedules(where, raw),
        capacity_type=_one_of(where, raw, "capacity_type", CAPACITY_TYPES, defaults.capacity_type),
        on_demand_fallback=_bool(where, raw, "on_demand_fallback", defaults.on_demand_fallback),
    )
    if queue.max_instances < queue.min_instances:
        raise ConfigError(
            f"{where}.max_instances must be >= min_instances (got {queue.max_instances} < {queue.min_instances})"
        )
    _check_schedule_values(where, queue)
    return queue


def _schedules(where: str, raw: dict[str, Any]) -> tuple[Schedule, ...]:
    value = raw.get("schedules", [])
    if not isinstance(value, list):
        raise ConfigError(f"{where}.schedules must be a list of schedules (got {_short(value)})")
    try:
        schedules = tuple(parse_schedule(f"{where}.schedules[{index}]", item) for index, item in enumerate(value))
    except ScheduleError as error:
        raise ConfigError(str(error)) from None
    names = [schedule.name for schedule in schedules]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise ConfigError(f"{where}.schedules[{index}].name is a duplicate (got {name!r})")
    return schedules


def _check_schedule_values(where: str, queue: QueueConfig) -> None:
    """The ceilings hold whichever schedule applies."""
    ceiling = queue.pool_ceiling
    if queue.warm_pool_size > ceiling:
        raise ConfigError(
            f"{where}.max_pool_instances must be >= warm_pool_size (got {ceiling} < {queue.warm_pool_size})"
        )
    for index, schedule in enumerate(queue.schedules):
        at = f"{where}.schedules[{index}]"
        if schedule.min_instances is not None and schedule.min_instances > queue.max_instances:
            raise ConfigError(
                f"{at}.min_instances must be <= max_instances {queue.max_instances} (got {schedule.min_instances})"
            )
        if schedule.warm_pool_size is not None and schedule.warm_pool_size > ceiling:
            raise ConfigError(
                f"{at}.warm_pool_size must be <= max_pool_instances {ceiling} (got {schedule.warm_pool_size})"
            )


def _string(where: str, raw: dict[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}.{key} must be a non-empty string (got {_short(value)})")
    return value


def _string_list(where: str, raw: dict[str, Any], key: str) -> tuple[str, ...]:
    value = raw.get(key)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}.{key} must be a non-empty list of strings (got {_short(value)})")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"{where}.{key}[{index}] must be a non-empty string (got {_short(item)})")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}.{key} has duplicates (got {_short(value)})")
    return tuple(value)


def _int(where: str, raw: dict[str, Any], key: str, default: int | None, minimum: int) -> int:
    if key not in raw:
        if default is None:
            raise ConfigError(f"{where}.{key} is required (got nothing)")
        return default
    value = raw[key]
    # bool is an int in Python; `true` for a count is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be an integer (got {_short(value)})")
    if value < minimum:
        raise ConfigError(f"{where}.{key} must be >= {minimum} (got {value})")
    return value


def _bool(where: str, raw: dict[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false (got {_short(value)})")
    return value


def _one_of(where: str, raw: dict[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = raw.get(key, default)
    if value not in choices:
        raise ConfigError(f"{where}.{key} must be one of {', '.join(choices)} (got {_short(value)})")
    return value


def _required(env: Mapping[str, str], key: str) -> str:
    value = env.get(key, "").strip()
    if not value:
        raise ConfigError(f"{key} is required (got {env.get(key)!r})")
    return value


def _fleet_name(env: Mapping[str, str]) -> str:
    name = _required(env, "FLEET_NAME")
    if not _QUEUE_NAME.match(name):
        raise ConfigError(f"FLEET_NAME must be letters, digits, '.', '_' or '-' (got {name!r})")
    return name


def _env_int(env: Mapping[str, str], key: str, default: int, minimum: int) -> int:
    text = env.get(key, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{key} must be an integer (got {text!r})") from None
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum} (got {value})")
    return value


def _env_bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    text = env.get(key, "").strip().lower()
    if not text:
        return default
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ConfigError(f"{key} must be true or false (got {env.get(key)!r})")


def _choice(env: Mapping[str, str], key: str, choices: tuple[str, ...], default: str) -> str:
    value = env.get(key, "").strip() or default
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)} (got {value!r})")
    return value


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
