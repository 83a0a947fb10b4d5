"""Configuration: defaults, and errors that name the field and the value."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.support.config import QUEUE, settings

from autoscaler.config import ConfigError, ReaperSettings, instance_architecture


def test_defaults() -> None:
    loaded = settings()
    (queue,) = loaded.queues
    assert (queue.min_instances, queue.agents_per_instance, queue.include_waiting) == (0, 5, False)
    assert (queue.idle_timeout_seconds, queue.max_uptime_seconds) == (600, 21600)
    assert (queue.capacity_type, queue.on_demand_fallback, queue.markets) == ("on-demand", True, ("on-demand",))
    assert loaded.endpoint == "https://agent.buildkite.com/v3"
    assert (loaded.bootstrap_timeout_seconds, loaded.ready_grace_seconds, loaded.dry_run) == (1200, 30, False)
    assert (loaded.baked_bootstrap_timeout_seconds, loaded.image_parameters) == (300, {})
    assert loaded.user_data.cache_region == "eu-west-1"
    assert (loaded.user_data.root_mode, loaded.user_data.nix_determinate) == ("ebs", True)
    assert (loaded.user_data.nix_installer_version, loaded.user_data.nix_trust_jobs) == ("v3.21.2", False)
    assert (loaded.user_data.root_tmpfs_size, loaded.user_data.min_free_space_gib) == ("75%", 5)
    # The newest release of the major the product is written for, never a new major unasked.
    assert loaded.user_data.agent_version == "3"


def test_instance_settings_from_the_environment() -> None:
    loaded = settings(
        ROOT_MODE="overlayroot",
        ROOT_TMPFS_SIZE="90%",
        NIX_INSTALLER_VERSION="v3.13.2",
        NIX_TRUST_JOBS="true",
        MIN_FREE_SPACE_GIB="12",
    ).user_data
    assert (loaded.root_mode, loaded.root_tmpfs_size, loaded.nix_installer_version) == ("overlayroot", "90%", "v3.13.2")
    assert (loaded.nix_trust_jobs, loaded.min_free_space_gib) == (True, 12)


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
            r"QUEUES\[1\]\(nixos-x86-aws\)\.max_instances must be >= 1 \(got 0\)",
        ),
        (
            [QUEUE, {**QUEUE, "name": "b", "min_instances": 3, "max_instances": 2}],
            r"QUEUES\[1\]\(b\)\.max_instances must be >= min_instances \(got 2 < 3\)",
        ),
        (
            [{**QUEUE, "max_instances": "4"}],
            r"QUEUES\[0\]\(nixos-x86-aws\)\.max_instances must be an integer \(got '4'\)",
        ),
        (
            [{**QUEUE, "max_instances": True}],
            r"QUEUES\[0\]\(nixos-x86-aws\)\.max_instances must be an integer \(got true\)",
        ),
        (
            [{**QUEUE, "instance_types": []}],
            r"QUEUES\[0\]\(nixos-x86-aws\)\.instance_types must be a non-empty list of strings \(got \[\]\)",
        ),
        (
            [{**QUEUE, "subnet_ids": ["a", ""]}],
            r"QUEUES\[0\]\(nixos-x86-aws\)\.subnet_ids\[1\] must be a non-empty string \(got ''\)",
        ),
        (
            [{**QUEUE, "idle_timeout_seconds": 0}],
            r"QUEUES\[0\]\(nixos-x86-aws\)\.idle_timeout_seconds must be >= 120 \(got 0\)",
        ),
        (
            # An agent idling out this soon would exit in the middle of its bootstrap.
            [{**QUEUE, "idle_timeout_seconds": 30}],
            r"QUEUES\[0\]\(nixos-x86-aws\)\.idle_timeout_seconds must be >= 120 \(got 30\)",
        ),
        (
            [{**QUEUE, "include_waiting": "yes"}],
            r"QUEUES\[0\]\(nixos-x86-aws\)\.include_waiting must be true or false \(got 'yes'\)",
        ),
        (
            [{**QUEUE, "max_instance": 3}],
            r"QUEUES\[0\]\(nixos-x86-aws\)\.max_instance is not a known queue setting \(got 3\)",
        ),
        (
            [{**QUEUE, "capacity_type": "Spot"}],
            r"QUEUES\[0\]\(nixos-x86-aws\)\.capacity_type must be one of on-demand, spot \(got 'Spot'\)",
        ),
        (
            [{**QUEUE, "capacity_type": "spot", "on_demand_fallback": "no"}],
            r"QUEUES\[0\]\(nixos-x86-aws\)\.on_demand_fallback must be true or false \(got 'no'\)",
        ),
        ([{**QUEUE, "name": "a b"}], r"QUEUES\[0\]\.name must be letters, digits.*\(got 'a b'\)"),
        ([QUEUE, QUEUE], r"QUEUES\[1\]\(nixos-x86-aws\)\.name is a duplicate of QUEUES\[0\]"),
        ([{**QUEUE, "architecture": "amd64"}], r"\.architecture must be one of x86_64, arm64 \(got 'amd64'\)"),
        ([{k: v for k, v in QUEUE.items() if k != "architecture"}], r"\.architecture must be a non-empty string"),
        (
            [{**QUEUE, "instance_types": ["c7i.2xlarge", "c7g.2xlarge"]}],
            r"\(nixos-x86-aws\)\.instance_types\[1\] is an arm64 type, not x86_64 \(got 'c7g.2xlarge'\)",
        ),
        (
            [{**QUEUE, "architecture": "arm64"}],
            r"\(nixos-x86-aws\)\.instance_types\[0\] is an x86_64 type, not arm64 \(got 'c7i.4xlarge'\)",
        ),
        (
            [{**QUEUE, "instance_types": ["c7i.large", "C7I.large"]}],
            r"\.instance_types\[1\]: instance type 'C7I.large' is not of the form family.size",
        ),
        ([{**QUEUE, "instance_types": ["c7i"]}], r"\.instance_types\[0\]: instance type 'c7i' is not of the form"),
        (
            [{k: v for k, v in QUEUE.items() if k != "max_instances"}],
            r"QUEUES\[0\]\(nixos-x86-aws\)\.max_instances is required",
        ),
    ],
)
def test_bad_queues_name_field_and_value(queues: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(queues)


STACK_ENV = {
    "LAUNCH_TEMPLATES": json.dumps({"x86_64": "lt-0x86", "arm64": "lt-0arm"}),
    "SUBNET_IDS": "subnet-a,subnet-b",
}


def bare(name: str, architecture: str, *instance_types: str) -> dict[str, Any]:
    """A queue as the template's Queues parameter holds it: no launch template, no subnets."""
    return {"name": name, "architecture": architecture, "instance_types": list(instance_types), "max_instances": 2}


def test_a_queue_gets_the_stacks_launch_template_for_its_architecture_and_the_stacks_subnets() -> None:
    queues = [
        bare("x86", "x86_64", "c7i.2xlarge"),
        bare("arm", "arm64", "r7g.2xlarge"),
        bare("gpu", "x86_64", "g5.2xlarge", "g6.2xlarge"),
    ]
    loaded = settings(queues, **STACK_ENV).queues
    assert [(q.name, q.architecture, q.launch_template_id) for q in loaded] == [
        ("x86", "x86_64", "lt-0x86"),
        ("arm", "arm64", "lt-0arm"),
        ("gpu", "x86_64", "lt-0x86"),
    ]
    assert {q.subnet_ids for q in loaded} == {("subnet-a", "subnet-b")}


def test_a_queue_may_bring_its_own_launch_template_and_subnets() -> None:
    own = {**bare("own", "arm64", "c7g.large"), "launch_template_id": "lt-0mine", "subnet_ids": ["subnet-z"]}
    (queue,) = settings([own], **STACK_ENV).queues
    assert (queue.launch_template_id, queue.subnet_ids) == ("lt-0mine", ("subnet-z",))
    # Without the stack's variables at all, as for a user who deploys the Lambdas another way.
    (queue,) = settings([own]).queues
    assert queue.launch_template_id == "lt-0mine"


@pytest.mark.parametrize(
    ("queues", "env", "message"),
    [
        (
            [bare("arm", "arm64", "c7g.large")],
            {**STACK_ENV, "LAUNCH_TEMPLATES": '{"x86_64": "lt-0x86"}'},
            r"QUEUES\[0\]\(arm\)\.launch_template_id is required: LAUNCH_TEMPLATES has none for arm64",
        ),
        (
            [bare("x86", "x86_64", "c7i.large")],
            {**STACK_ENV, "SUBNET_IDS": ""},
            r"QUEUES\[0\]\(x86\)\.subnet_ids is required when SUBNET_IDS is empty",
        ),
        ([QUEUE], {"LAUNCH_TEMPLATES": "lt-1"}, r"LAUNCH_TEMPLATES must be a JSON object \(Expecting value"),
        ([QUEUE], {"LAUNCH_TEMPLATES": '["lt-1"]'}, r"LAUNCH_TEMPLATES must be a JSON object .*\(got \[\"lt-1\"\]\)"),
        (
            [QUEUE],
            {"LAUNCH_TEMPLATES": '{"x86": "lt-1"}'},
            r"LAUNCH_TEMPLATES keys must be one of x86_64, arm64 \(got 'x86'\)",
        ),
        ([QUEUE], {"LAUNCH_TEMPLATES": '{"arm64": ""}'}, r"LAUNCH_TEMPLATES\.arm64 must be a non-empty string"),
    ],
)
def test_stack_defaults_that_cannot_work_name_the_queue_or_variable(
    queues: Any, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(queues, **env)


@pytest.mark.parametrize(
    ("instance_type", "architecture"),
    [
        ("m7i.4xlarge", "x86_64"),
        ("c7a.large", "x86_64"),
        ("g4dn.xlarge", "x86_64"),
        ("g5.2xlarge", "x86_64"),
        ("c7i-flex.large", "x86_64"),
        ("m7g.large", "arm64"),
        ("c7gn.16xlarge", "arm64"),
        ("r7g.2xlarge", "arm64"),
        ("r8gd.xlarge", "arm64"),
        ("im4gn.large", "arm64"),
        ("g5g.xlarge", "arm64"),
        ("a1.metal", "arm64"),
    ],
)
def test_instance_architecture_comes_from_the_family(instance_type: str, architecture: str) -> None:
    assert instance_architecture(instance_type) == architecture


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FLEET_NAME": ""}, r"FLEET_NAME is required \(got ''\)"),
        ({"BOOTSTRAP_TIMEOUT_SECONDS": "20m"}, r"BOOTSTRAP_TIMEOUT_SECONDS must be an integer \(got '20m'\)"),
        ({"BOOTSTRAP_TIMEOUT_SECONDS": "5"}, r"BOOTSTRAP_TIMEOUT_SECONDS must be >= 60 \(got 5\)"),
        ({"DRY_RUN": "maybe"}, r"DRY_RUN must be true or false \(got 'maybe'\)"),
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
