"""Configuration: defaults, and errors that name the field and the value."""

from __future__ import annotations

import json
from typing import Any

import pytest

from autoscaler.config import ConfigError, ReaperSettings, ScalerSettings

QUEUE = {
    "name": "nixos-x86-aws",
    "launch_template_id": "lt-0123",
    "instance_types": ["c7i.4xlarge"],
    "subnet_ids": ["subnet-1"],
    "max_instances": 4,
}
ENV = {
    "AWS_REGION": "eu-west-1",
    "FLEET_NAME": "ci",
    "BUILDKITE_AGENT_TOKEN_PARAMETER": "/bk/token",
    "SSH_KEY_PARAMETER": "/bk/ssh",
    "NIX_SIGNING_KEY_PARAMETER": "/bk/nix",
    "NIX_CACHE_BUCKET": "cache",
    "NIX_CACHE_PUBLIC_KEY": "cache-1:abc=",
}


def settings(queues: Any = None, **env: str) -> ScalerSettings:
    text = queues if isinstance(queues, str) else json.dumps(queues or [QUEUE])
    return ScalerSettings.from_env({**ENV, "QUEUES": text, **env})


def test_defaults() -> None:
    loaded = settings()
    (queue,) = loaded.queues
    assert (queue.min_instances, queue.agents_per_instance, queue.include_waiting) == (0, 5, False)
    assert (queue.idle_timeout_seconds, queue.max_uptime_seconds) == (600, 21600)
    assert (queue.capacity_type, queue.on_demand_fallback, queue.markets) == ("on-demand", True, ("on-demand",))
    assert loaded.endpoint == "https://agent.buildkite.com/v3"
    assert (loaded.bootstrap_timeout_seconds, loaded.ready_grace_seconds, loaded.dry_run) == (1200, 60, False)
    assert loaded.user_data.cache_region == "eu-west-1"
    assert (loaded.user_data.root_mode, loaded.user_data.nix_determinate) == ("overlayroot", True)


def test_spot_queues_try_spot_then_on_demand_unless_fallback_is_off() -> None:
    spot, strict = settings(
        [
            {**QUEUE, "capacity_type": "spot"},
            {**QUEUE, "name": "deploy", "capacity_type": "spot", "on_demand_fallback": False},
        ]
    ).queues
    assert spot.markets == ("spot", "on-demand")
    assert strict.markets == ("spot",)


def test_any_number_of_queues() -> None:
    queues = [{**QUEUE, "name": f"q{index}"} for index in range(5)]
    assert [queue.name for queue in settings(queues).queues] == ["q0", "q1", "q2", "q3", "q4"]


@pytest.mark.parametrize(
    ("queues", "message"),
    [
        ("not json", r"QUEUES must be a JSON array \(Expecting value at char 0\)"),
        ("{}", r"QUEUES must be a non-empty JSON array \(got \{\}\)"),
        (
            [QUEUE, {**QUEUE, "min_instances": 2, "max_instances": 0}],
            r"QUEUES\[1\]\.max_instances must be >= 1 \(got 0\)",
        ),
        (
            [QUEUE, {**QUEUE, "name": "b", "min_instances": 3, "max_instances": 2}],
            r"QUEUES\[1\]\.max_instances must be >= min_instances \(got 2 < 3\)",
        ),
        ([{**QUEUE, "max_instances": "4"}], r"QUEUES\[0\]\.max_instances must be an integer \(got '4'\)"),
        ([{**QUEUE, "max_instances": True}], r"QUEUES\[0\]\.max_instances must be an integer \(got true\)"),
        (
            [{**QUEUE, "instance_types": []}],
            r"QUEUES\[0\]\.instance_types must be a non-empty list of strings \(got \[\]\)",
        ),
        ([{**QUEUE, "subnet_ids": ["a", ""]}], r"QUEUES\[0\]\.subnet_ids\[1\] must be a non-empty string \(got ''\)"),
        ([{**QUEUE, "idle_timeout_seconds": 0}], r"QUEUES\[0\]\.idle_timeout_seconds must be >= 1 \(got 0\)"),
        ([{**QUEUE, "include_waiting": "yes"}], r"QUEUES\[0\]\.include_waiting must be true or false \(got 'yes'\)"),
        (
            [{**QUEUE, "capacity_type": "Spot"}],
            r"QUEUES\[0\]\.capacity_type must be one of on-demand, spot \(got 'Spot'\)",
        ),
        (
            [{**QUEUE, "capacity_type": "spot", "on_demand_fallback": "no"}],
            r"QUEUES\[0\]\.on_demand_fallback must be true or false \(got 'no'\)",
        ),
        ([{**QUEUE, "max_instance": 3}], r"QUEUES\[0\]\.max_instance is not a known queue setting \(got 3\)"),
        ([{**QUEUE, "name": "a b"}], r"QUEUES\[0\]\.name must be letters, digits.*\(got 'a b'\)"),
        ([QUEUE, QUEUE], r"QUEUES\[1\]\.name is a duplicate \(got 'nixos-x86-aws'\)"),
        ([{k: v for k, v in QUEUE.items() if k != "max_instances"}], r"QUEUES\[0\]\.max_instances is required"),
    ],
)
def test_bad_queues_name_field_and_value(queues: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(queues)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FLEET_NAME": ""}, r"FLEET_NAME is required \(got ''\)"),
        ({"BOOTSTRAP_TIMEOUT_SECONDS": "20m"}, r"BOOTSTRAP_TIMEOUT_SECONDS must be an integer \(got '20m'\)"),
        ({"BOOTSTRAP_TIMEOUT_SECONDS": "5"}, r"BOOTSTRAP_TIMEOUT_SECONDS must be >= 60 \(got 5\)"),
        ({"DRY_RUN": "maybe"}, r"DRY_RUN must be true or false \(got 'maybe'\)"),
        ({"ROOT_MODE": "zfs"}, r"ROOT_MODE must be one of overlayroot, ebs \(got 'zfs'\)"),
        ({"BUILDKITE_AGENT_ENDPOINT": "agent.buildkite.com"}, r"BUILDKITE_AGENT_ENDPOINT must be an http\(s\) URL"),
        ({"NIX_CACHE_BUCKET": " "}, r"NIX_CACHE_BUCKET is required \(got ' '\)"),
    ],
)
def test_bad_environment_names_variable_and_value(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(**env)


def test_reaper_needs_only_its_own_settings() -> None:
    loaded = ReaperSettings.from_env({"FLEET_NAME": "ci", "DRY_RUN": "true"})
    assert (loaded.fleet_name, loaded.bootstrap_timeout_seconds, loaded.max_terminations, loaded.dry_run) == (
        "ci",
        1200,
        20,
        True,
    )
    with pytest.raises(ConfigError, match=r"REAPER_MAX_TERMINATIONS must be >= 1 \(got 0\)"):
        ReaperSettings.from_env({"FLEET_NAME": "ci", "REAPER_MAX_TERMINATIONS": "0"})
