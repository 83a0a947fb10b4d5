"""`--set key=value`: the simulation's settings, validated by the deployment's own rules.

Queue settings go through `parse_queues` and the Lambdas' integer variables
through `env_int`, so a value a deployment refuses is refused here with the
same message. The simulation's own settings use the same checks.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from autoscaler.config import (
    ConfigError,
    QueueConfig,
    check_int,
    check_range,
    env_int,
    parse_queues,
    queues_from_env,
)
from autoscaler.schedules import MINUTES_PER_DAY, WEEKDAYS, Schedule
from instance.settings import SettingsError, check_root_mode
from simulation.deployment import deployment
from simulation.runner import Scenario
from simulation.world import BOOT_PATHS

QUEUE_KEYS = (
    "min_instances",
    "max_instances",
    "agents_per_instance",
    "idle_timeout_seconds",
    "max_uptime_seconds",
    "include_waiting",
    "capacity_type",
    "on_demand_fallback",
    "warm_pool_size",
    "max_pool_instances",
    "schedules",  # a JSON list, as in QUEUES
)
# Simulation settings that are the Lambdas' environment variables.
DEPLOYED_KEYS = {
    "bootstrap_timeout_seconds": "BOOTSTRAP_TIMEOUT_SECONDS",
    "ready_grace_seconds": "READY_GRACE_SECONDS",
    "reap_cap": "REAPER_MAX_TERMINATIONS",
    "baked_bootstrap_timeout_seconds": "BAKED_BOOTSTRAP_TIMEOUT_SECONDS",
    "pool_max_age_seconds": "POOL_MAX_AGE_SECONDS",
}


@dataclass(frozen=True)
class Rule:
    kind: type
    minimum: float
    maximum: float | None = None


WORLD_RULES = {
    "boot_seconds": Rule(float, 1),
    "boot_jitter": Rule(float, 0, 0.9),
    "connect_delay": Rule(float, 0),
    "failure_share": Rule(float, 0, 1),
    "seed": Rule(int, 0),
    "pool_start_seconds": Rule(float, 1),
    "pool_warm_seconds": Rule(float, 0),
    "stop_seconds": Rule(float, 0),
}
# Per queue like QUEUE_KEYS, but the simulated market's, not the deployment's: `spot_<field of SpotMarket>`.
SPOT_RULES = {
    "spot_discount": Rule(float, 0, 1),
    "spot_interruptions_per_hour": Rule(float, 0),
    "spot_unavailable_share": Rule(float, 0, 1),
}
SCENARIO_RULES = {
    "poll_seconds": Rule(float, 1),  # 0 would poll forever within one invocation
    "reaper_period": Rule(float, 60),
    "drain_hours": Rule(float, 1),
}
KNOWN = (
    *QUEUE_KEYS,
    *SPOT_RULES,
    *DEPLOYED_KEYS,
    *WORLD_RULES,
    *SCENARIO_RULES,
    "boot_path",
    "root_mode",
    "queues",
)


def with_overrides(scenario: Scenario, overrides: dict[str, str]) -> Scenario:
    """Apply `key=value` settings; a queue key applies to every queue, or to one as `QUEUE.key`.

    Raises ConfigError naming the setting and the value.
    """
    for key, text in overrides.items():
        try:
            scenario = _apply(scenario, key, text)
        # A value the instance cannot be given fails here as a deployment would: with its message.
        except (ConfigError, SettingsError) as error:
            raise ConfigError(f"{key}={text}: {error}") from None
    return scenario


def _apply(scenario: Scenario, key: str, text: str) -> Scenario:
    queue_name, _, name = key.rpartition(".")
    if name in QUEUE_KEYS:
        return _override_queues(scenario, queue_name, name, text)
    if name in SPOT_RULES:
        return _override_spot(scenario, queue_name, name, _number(name, text, SPOT_RULES[name]))
    if queue_name:
        raise ConfigError(f"{name!r} is not a queue setting (one of {', '.join((*QUEUE_KEYS, *SPOT_RULES))})")
    if name == "queues":
        return replace(scenario, queues=queues_from_file(text))
    if name in DEPLOYED_KEYS:
        return replace(scenario, **{name: env_int({DEPLOYED_KEYS[name]: text}, DEPLOYED_KEYS[name])})
    if name == "root_mode":
        # ROOT_MODE, as the instance's settings check it.
        return replace(scenario, root_mode=check_root_mode(text))
    if name == "boot_path":
        if text not in BOOT_PATHS:
            raise ConfigError(f"boot_path must be one of {', '.join(BOOT_PATHS)} (got {text!r})")
        path = BOOT_PATHS[text]
        world = replace(scenario.world, boot_path=text, boot_seconds=path.seconds, boot_jitter=path.jitter)
        return replace(scenario, world=world)
    if name in WORLD_RULES:
        return replace(scenario, world=replace(scenario.world, **{name: _number(name, text, WORLD_RULES[name])}))
    if name in SCENARIO_RULES:
        return replace(scenario, **{name: _number(name, text, SCENARIO_RULES[name])})
    raise ConfigError(f"unknown setting (known: {', '.join(KNOWN)})")


def queues_from_file(path: str) -> tuple[QueueConfig, ...]:
    """A team's own queues: a file holding the template's Queues parameter (a JSON array),
    read as the scaler reads QUEUES, with the stack's launch templates and subnets."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read the queues file ({error.strerror})") from None
    return queues_from_env({**deployment().env, "QUEUES": text})


def _queues_named(scenario: Scenario, queue_name: str) -> list[str]:
    """The queues `QUEUE.key` names: that one, or every queue for a bare key."""
    names = [queue.name for queue in scenario.queues]
    if queue_name and queue_name not in names:
        raise ConfigError(f"no queue {queue_name!r} (queues: {', '.join(names)})")
    return [queue_name] if queue_name else names


def _override_spot(scenario: Scenario, queue_name: str, name: str, value: float) -> Scenario:
    world = scenario.world
    field = name.removeprefix("spot_")
    named = _queues_named(scenario, queue_name)
    markets = {queue: replace(world.spot_market(queue), **{field: value}) for queue in named}
    return replace(scenario, world=replace(world, spot={**world.spot, **markets}))


def _override_queues(scenario: Scenario, queue_name: str, name: str, text: str) -> Scenario:
    _queues_named(scenario, queue_name)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text  # parse_queues names it: "must be an integer (got 'lots')"
    raw = [queue_json(queue) for queue in scenario.queues]
    for queue in raw:
        if queue_name in ("", queue["name"]):
            queue[name] = value
    # The product's own validation, so the simulation accepts exactly what a deployment would.
    return replace(scenario, queues=parse_queues(json.dumps(raw)))


def _number(name: str, text: str, rule: Rule) -> Any:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a number (got {text!r})")
    if rule.kind is int:
        return check_int(name, int(value) if value.is_integer() else text, int(rule.minimum))
    return check_range(name, value, rule.minimum, rule.maximum)


def queue_json(queue: QueueConfig) -> dict[str, Any]:
    """The queue as a QUEUES entry: what `parse_queues` reads back to the same queue."""
    raw = asdict(queue)
    raw["schedules"] = [_schedule_json(schedule) for schedule in queue.schedules]
    return raw


def _schedule_json(schedule: Schedule) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": schedule.name,
        "days": [WEEKDAYS[day] for day in schedule.days],
        "start": _clock(schedule.start_minute),
        "end": _clock(schedule.end_minute),
        "time_zone": schedule.time_zone,
    }
    for key in ("min_instances", "warm_pool_size"):
        if getattr(schedule, key) is not None:
            raw[key] = getattr(schedule, key)
    return raw


def _clock(minute: int) -> str:
    return "24:00" if minute == MINUTES_PER_DAY else f"{minute // 60:02d}:{minute % 60:02d}"
