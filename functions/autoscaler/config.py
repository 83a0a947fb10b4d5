"""Settings of both Lambdas, read once from the environment and validated.

Every error names the field and the value, so a bad deployment fails at the
start of the invocation with a message an operator can act on. The values an
instance receives (UserDataSettings) are read here but validated by
instance.settings, when the scaler renders the user-data at its start.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autoscaler.schedules import Schedule, ScheduleError, parse_schedule
from instance.settings import (
    AGENT_MAJOR_VERSION,
    ARCHITECTURES,
    DEFAULT_NIX_INSTALLER_VERSION,
    MIN_IDLE_TIMEOUT_SECONDS,
    NAME,
    InstallSettings,
)

DEFAULT_ENDPOINT = "https://agent.buildkite.com/v3"
DEFAULT_BOOTSTRAP_TIMEOUT = 1200
DEFAULT_BAKED_BOOTSTRAP_TIMEOUT = 300
# Counted from when the agents started: the metrics API shows them within a poll or two.
DEFAULT_READY_GRACE = 30
DEFAULT_REAP_CAP = 20
# A week: a stopped pool instance older than this is replaced by a fresh one.
DEFAULT_POOL_MAX_AGE = 7 * 24 * 3600
DEFAULT_ROOT_TMPFS_SIZE = "75%"
DEFAULT_MIN_FREE_SPACE_GIB = 5
ON_DEMAND = "on-demand"
SPOT = "spot"
CAPACITY_TYPES = (ON_DEMAND, SPOT)

_PARAMETER_NAME = re.compile(r"^/?[A-Za-z0-9_./-]{1,1011}$")
# Graviton families carry a "g" after the generation (m7g, c7gn, r8gd, im4gn,
# g5g); a1 is the first Graviton. Other families (g4dn, g5, m7i, c7a) are x86.
_ARM_FAMILY = re.compile(r"(a1|[a-z]+[0-9]+[a-z0-9]*g[a-z0-9]*)(-flex)?")
_FAMILY = re.compile(r"[a-z]+[0-9]+[a-z0-9-]*")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names field and value."""


@dataclass(frozen=True)
class QueueConfig:
    name: str
    architecture: str
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


@dataclass(frozen=True, kw_only=True)
class UserDataSettings(InstallSettings):
    """Deployment-wide values rendered into every instance's user-data.

    Only names of secrets live here, never their values.
    """

    agent_token_parameter: str
    ssh_key_parameter: str
    signing_key_parameter: str
    root_tmpfs_size: str = DEFAULT_ROOT_TMPFS_SIZE
    min_free_space_gib: int = DEFAULT_MIN_FREE_SPACE_GIB


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
    baked_bootstrap_timeout_seconds: int = DEFAULT_BAKED_BOOTSTRAP_TIMEOUT
    # Architecture -> SSM parameter of its current AMI (the image pipeline's output);
    # empty: images are not tracked (no image tags, no stale counts).
    image_parameters: Mapping[str, str] = field(default_factory=dict)

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
            # Validated with every value the instance gets, by instance.settings at the first render.
            root_mode=env.get("ROOT_MODE", "").strip() or "ebs",
            nix_determinate=_env_bool(env, "NIX_DETERMINATE", True),
            agent_version=env.get("BUILDKITE_AGENT_VERSION") or AGENT_MAJOR_VERSION,
            root_tmpfs_size=env.get("ROOT_TMPFS_SIZE") or DEFAULT_ROOT_TMPFS_SIZE,
            nix_installer_version=env.get("NIX_INSTALLER_VERSION") or DEFAULT_NIX_INSTALLER_VERSION,
            nix_trust_jobs=_env_bool(env, "NIX_TRUST_JOBS", False),
            min_free_space_gib=env_int(env, "MIN_FREE_SPACE_GIB"),
        )
        endpoint = env.get("BUILDKITE_AGENT_ENDPOINT") or DEFAULT_ENDPOINT
        if not endpoint.startswith(("https://", "http://")):
            raise ConfigError(f"BUILDKITE_AGENT_ENDPOINT must be an http(s) URL (got {endpoint!r})")
        return cls(
            fleet_name=_fleet_name(env),
            queues=queues_from_env(env),
            agent_token_parameter=token_parameter,
            endpoint=endpoint.rstrip("/"),
            bootstrap_timeout_seconds=env_int(env, "BOOTSTRAP_TIMEOUT_SECONDS"),
            ready_grace_seconds=env_int(env, "READY_GRACE_SECONDS"),
            dry_run=_env_bool(env, "DRY_RUN", False),
            user_data=user_data,
            baked_bootstrap_timeout_seconds=env_int(env, "BAKED_BOOTSTRAP_TIMEOUT_SECONDS"),
            image_parameters=parse_image_parameters(env.get("IMAGE_PARAMETERS", "")),
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
    baked_bootstrap_timeout_seconds: int = DEFAULT_BAKED_BOOTSTRAP_TIMEOUT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ReaperSettings:
        return cls(
            fleet_name=_fleet_name(env),
            bootstrap_timeout_seconds=env_int(env, "BOOTSTRAP_TIMEOUT_SECONDS"),
            max_terminations=env_int(env, "REAPER_MAX_TERMINATIONS"),
            dry_run=_env_bool(env, "DRY_RUN", False),
            queues=queues_from_env(env) if env.get("QUEUES", "").strip() else (),
            pool_max_age_seconds=env_int(env, "POOL_MAX_AGE_SECONDS"),
            baked_bootstrap_timeout_seconds=env_int(env, "BAKED_BOOTSTRAP_TIMEOUT_SECONDS"),
        )


def parse_image_parameters(text: str) -> dict[str, str]:
    """IMAGE_PARAMETERS: architecture -> SSM parameter name of its current AMI; empty for none."""
    images = _architecture_map("IMAGE_PARAMETERS", text)
    for arch, name in images.items():
        if not _PARAMETER_NAME.match(name):
            raise ConfigError(f"IMAGE_PARAMETERS.{arch} must be an SSM parameter name (got {_short(name)})")
    return images


def queues_from_env(env: Mapping[str, str]) -> tuple[QueueConfig, ...]:
    """QUEUES; a queue without its own launch template or subnets gets the stack's.

    LAUNCH_TEMPLATES maps an architecture to the stack's launch template for it,
    SUBNET_IDS lists the stack's subnets (comma-separated). The deploy-time check
    of the template's Queues parameter calls this too, so both accept the same lists.
    """
    return parse_queues(_required(env, "QUEUES"), launch_templates_from_env(env), _subnet_ids(env))


def launch_templates_from_env(env: Mapping[str, str]) -> dict[str, str]:
    return _architecture_map("LAUNCH_TEMPLATES", env.get("LAUNCH_TEMPLATES", ""))


def _architecture_map(key: str, text: str) -> dict[str, str]:
    """A JSON object of architecture to a non-empty string (a template id, a parameter name)."""
    if not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{key} must be a JSON object ({error.msg} at char {error.pos})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{key} must be a JSON object of architecture to a name (got {_short(raw)})")
    for architecture in raw:
        if architecture not in ARCHITECTURES:
            raise ConfigError(f"{key} keys must be one of {', '.join(ARCHITECTURES)} (got {architecture!r})")
        _string(key, raw, architecture)
    return dict(raw)


def parse_queues(
    text: str, launch_templates: Mapping[str, str] | None = None, subnet_ids: tuple[str, ...] = ()
) -> tuple[QueueConfig, ...]:
    """The queue list, each queue's missing launch template and subnets taken from the defaults given."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"QUEUES must be a JSON array ({error.msg} at char {error.pos})") from None
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"QUEUES must be a non-empty JSON array (got {_short(raw)})")
    stack = _StackDefaults(launch_templates or {}, subnet_ids)
    queues = tuple(_queue(index, item, stack) for index, item in enumerate(raw))
    first: dict[str, int] = {}
    for index, queue in enumerate(queues):
        if queue.name in first:
            raise ConfigError(f"{queue_where(index, queue.name)}.name is a duplicate of QUEUES[{first[queue.name]}]")
        first[queue.name] = index
    return queues


def queue_where(index: int, name: str) -> str:
    """How an error names a queue: its place in the list and its name."""
    return f"QUEUES[{index}]({name})"


def instance_architecture(instance_type: str) -> str:
    """x86_64 or arm64, from the instance type's family (the part before the dot)."""
    family, dot, size = instance_type.partition(".")
    if not (_FAMILY.fullmatch(family) and dot and size):
        raise ConfigError(f"instance type {instance_type!r} is not of the form family.size, e.g. c7i.2xlarge")
    return "arm64" if _ARM_FAMILY.fullmatch(family) else "x86_64"


@dataclass(frozen=True)
class _StackDefaults:
    launch_templates: Mapping[str, str]
    subnet_ids: tuple[str, ...]


_QUEUE_FIELDS = {
    "name",
    "architecture",
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


def _queue(index: int, raw: Any, stack: _StackDefaults) -> QueueConfig:
    where = f"QUEUES[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a JSON object (got {_short(raw)})")
    name = _string(where, raw, "name")
    if not NAME.fullmatch(name):
        raise ConfigError(f"{where}.name must be letters, digits, '.', '_' or '-' (got {name!r})")
    where = queue_where(index, name)
    unknown = sorted(set(raw) - _QUEUE_FIELDS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]} is not a known queue setting (got {_short(raw[unknown[0]])})")
    architecture = _string(where, raw, "architecture")
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"{where}.architecture must be one of {', '.join(ARCHITECTURES)} (got {architecture!r})")
    defaults = QueueConfig(name, architecture, "", (), (), 0)
    queue = QueueConfig(
        name=name,
        architecture=architecture,
        launch_template_id=_launch_template(where, raw, architecture, stack),
        instance_types=_instance_types(where, raw, architecture),
        subnet_ids=_subnets(where, raw, stack),
        max_instances=_int(where, raw, "max_instances", None, 1),
        min_instances=_int(where, raw, "min_instances", defaults.min_instances, 0),
        agents_per_instance=_int(where, raw, "agents_per_instance", defaults.agents_per_instance, 1),
        include_waiting=_bool(where, raw, "include_waiting", defaults.include_waiting),
        # An idle timeout of 0 means "never idle out": burst instances would
        # then run forever, so it is refused rather than defaulted.
        idle_timeout_seconds=_int(
            where, raw, "idle_timeout_seconds", defaults.idle_timeout_seconds, MIN_IDLE_TIMEOUT_SECONDS
        ),
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


def _launch_template(where: str, raw: dict[str, Any], architecture: str, stack: _StackDefaults) -> str:
    if "launch_template_id" in raw:
        return _string(where, raw, "launch_template_id")
    if architecture not in stack.launch_templates:
        raise ConfigError(
            f"{where}.launch_template_id is required: LAUNCH_TEMPLATES has none for {architecture} "
            f"(got {_short(dict(stack.launch_templates))})"
        )
    return stack.launch_templates[architecture]


def _instance_types(where: str, raw: dict[str, Any], architecture: str) -> tuple[str, ...]:
    # An arm64 type with an x86_64 AMI (or the reverse) never boots: refused here, not at launch.
    types = _string_list(where, raw, "instance_types")
    for index, instance_type in enumerate(types):
        try:
            actual = instance_architecture(instance_type)
        except ConfigError as error:
            raise ConfigError(f"{where}.instance_types[{index}]: {error}") from None
        if actual != architecture:
            raise ConfigError(
                f"{where}.instance_types[{index}] is an {actual} type, not {architecture} (got {instance_type!r})"
            )
    return types


def _subnets(where: str, raw: dict[str, Any], stack: _StackDefaults) -> tuple[str, ...]:
    if "subnet_ids" in raw:
        return _string_list(where, raw, "subnet_ids")
    if not stack.subnet_ids:
        raise ConfigError(f"{where}.subnet_ids is required when SUBNET_IDS is empty (got nothing)")
    return stack.subnet_ids


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
    return check_int(f"{where}.{key}", raw[key], minimum)


def check_int(field: str, value: Any, minimum: int) -> int:
    """The rule for every integer setting; the simulation checks its settings with it too."""
    # bool is an int in Python; `true` for a count is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{field} must be an integer (got {_short(value)})")
    return check_range(field, value, minimum)


def check_range(field: str, value: float, minimum: float, maximum: float | None = None) -> Any:
    if value < minimum:
        raise ConfigError(f"{field} must be >= {minimum} (got {value})")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{field} must be <= {maximum} (got {value})")
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


def _subnet_ids(env: Mapping[str, str]) -> tuple[str, ...]:
    """SUBNET_IDS: comma-separated, as CloudFormation joins a List<AWS::EC2::Subnet::Id>."""
    return tuple(item.strip() for item in env.get("SUBNET_IDS", "").split(",") if item.strip())


def _fleet_name(env: Mapping[str, str]) -> str:
    name = _required(env, "FLEET_NAME")
    if not NAME.fullmatch(name):
        raise ConfigError(f"FLEET_NAME must be letters, digits, '.', '_' or '-' (got {name!r})")
    return name


# Integer variables of the environment: (default, minimum).
ENV_INTS = {
    "BOOTSTRAP_TIMEOUT_SECONDS": (DEFAULT_BOOTSTRAP_TIMEOUT, 60),
    "READY_GRACE_SECONDS": (DEFAULT_READY_GRACE, 0),
    "REAPER_MAX_TERMINATIONS": (DEFAULT_REAP_CAP, 1),
    "BAKED_BOOTSTRAP_TIMEOUT_SECONDS": (DEFAULT_BAKED_BOOTSTRAP_TIMEOUT, 60),
    "MIN_FREE_SPACE_GIB": (DEFAULT_MIN_FREE_SPACE_GIB, 0),
    "POOL_MAX_AGE_SECONDS": (DEFAULT_POOL_MAX_AGE, 3600),
}


def env_int(env: Mapping[str, str], key: str) -> int:
    """One of `ENV_INTS`, validated; the simulation reads its copies of them through this."""
    default, minimum = ENV_INTS[key]
    text = env.get(key, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{key} must be an integer (got {text!r})") from None
    return check_range(key, value, minimum)


def _env_bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    text = env.get(key, "").strip().lower()
    if not text:
        return default
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ConfigError(f"{key} must be true or false (got {env.get(key)!r})")


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
