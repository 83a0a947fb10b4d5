"""The scaler Lambda end to end: moto for EC2 and SSM, the fake Buildkite API over HTTP."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from emulators.buildkite import FakeBuildkite, Reply, metrics_body
from freezegun import freeze_time
from tests.support.aws import FAKE_TOKEN, FLEET, Stack, emf_records, scaler_env
from tests.support.lambda_context import LambdaContext
from tests.support.scaler import ARM, X86, by_queue, fleet_instances, invoke, tags_of, user_data_of
from tests.support.template import Resolver, dashboard_queries, parameter_values
from tools.invoke import load_template

from autoscaler import scaler
from autoscaler.config import ConfigError, ScalerSettings
from autoscaler.userdata import render_user_data
from instance.settings import SettingsError


def metric_total(output: str, name: str) -> float:
    return sum(record.get(name, 0) for record in emf_records(output) if "queue" not in record)


def launch_busy_queues(stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    buildkite.serve_metrics({X86: {"scheduled": 12}, ARM: {"scheduled": 2}})
    return invoke(monkeypatch, buildkite, [stack.queue(X86), stack.queue(ARM)])


def test_scheduled_jobs_launch_whole_instances_with_the_queue_launch_settings(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = launch_busy_queues(stack, buildkite, monkeypatch)

    x86, arm = by_queue(stack, X86), by_queue(stack, ARM)
    assert (len(x86), len(arm)) == (3, 1)
    assert len(summary["queues"][X86]["launched"]) == 3
    settings = ScalerSettings.from_env(
        scaler_env(buildkite.endpoint, [stack.queue(X86), stack.queue(ARM)]) | {"AWS_REGION": "us-east-1"}
    )
    for queue, instances, first_type in ((X86, x86, "c7i.4xlarge"), (ARM, arm, "m7g.2xlarge")):
        expected_user_data = render_user_data(settings.user_data, settings.queues[queue == ARM], "burst", FLEET)
        for instance in instances:
            tags = tags_of(instance)
            assert tags["buildkite-autoscaler:fleet"] == FLEET
            assert tags["buildkite-autoscaler:role"] == "burst"
            assert tags["buildkite-autoscaler:bootstrap"] == "pending"
            assert tags["Name"] == f"buildkite-{queue}"
            assert tags["aws:ec2launchtemplate:id"] == stack.templates["arm64" if queue == ARM else "x86_64"]
            assert instance["InstanceType"] == first_type
            assert instance["SubnetId"] == stack.subnets[0]
            assert user_data_of(stack, instance["InstanceId"]) == expected_user_data
    for call in stack.behaviour.run_calls:
        assert call["InstanceInitiatedShutdownBehavior"] == "terminate"
        assert {spec["ResourceType"] for spec in call["TagSpecifications"]} == {"instance", "volume"}
    assert buildkite.requests[0]["authorization"] == f"Token {FAKE_TOKEN}"


def test_next_poll_with_the_same_demand_counts_booting_instances(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    launch_busy_queues(stack, buildkite, monkeypatch)
    stack.behaviour.run_calls.clear()

    summary = invoke(monkeypatch, buildkite, [stack.queue(X86), stack.queue(ARM)])

    assert stack.behaviour.run_calls == []
    assert summary["queues"][X86]["last_plan"]["booting"] == 3
    assert summary["queues"][X86]["last_plan"]["expected_agents"] == 15
    assert len(fleet_instances(stack)) == 4


def test_connected_agents_covering_the_jobs_launch_nothing(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    buildkite.serve_metrics({X86: {"scheduled": 4, "running": 6, "idle": 4, "busy": 6, "total": 10}})

    summary = invoke(monkeypatch, buildkite, [stack.queue(X86), stack.queue(ARM)])

    assert fleet_instances(stack) == []
    assert summary["queues"][X86]["last_plan"]["reason"].startswith("covered")


def test_at_max_instances_nothing_launches_and_the_shortfall_is_logged(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch, logs: Callable[[], list[dict[str, Any]]]
) -> None:
    buildkite.serve_metrics({X86: {"scheduled": 100}})
    invoke(monkeypatch, buildkite, [stack.queue(X86, max_instances=2)])
    assert len(by_queue(stack, X86)) == 2
    logged_before = len(logs())

    summary = invoke(monkeypatch, buildkite, [stack.queue(X86, max_instances=2)])

    assert len(by_queue(stack, X86)) == 2
    plan = summary["queues"][X86]["last_plan"]
    assert plan["launch_total"] == 0
    assert plan["unmet_instances"] == 18
    (decision,) = [line for line in logs()[logged_before:] if line["message"] == "scaling decision"]
    assert decision["plan"]["unmet_instances"] == 18
    assert "at max_instances" in decision["plan"]["reason"]


def test_stuck_instances_count_toward_max_but_not_capacity(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    with freeze_time(two_hours_ago):
        buildkite.serve_metrics({X86: {"scheduled": 10}})
        invoke(monkeypatch, buildkite, [stack.queue(X86, max_instances=4)])
    assert len(by_queue(stack, X86)) == 2

    summary = invoke(monkeypatch, buildkite, [stack.queue(X86, max_instances=4)])

    plan = summary["queues"][X86]["last_plan"]
    assert (plan["stuck"], plan["expected_agents"]) == (2, 0)
    assert len(summary["queues"][X86]["launched"]) == 2
    assert plan["unmet_instances"] == 0
    assert len(by_queue(stack, X86)) == 4


def test_ready_instances_within_the_grace_period_still_count_as_booting(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    buildkite.serve_metrics({X86: {"scheduled": 5}})
    invoke(monkeypatch, buildkite, [stack.queue(X86)])
    (instance,) = by_queue(stack, X86)
    just_now = datetime.now(UTC).isoformat()
    stack.ec2.create_tags(
        Resources=[instance["InstanceId"]],
        Tags=[
            {"Key": "buildkite-autoscaler:bootstrap", "Value": "complete"},
            {"Key": "buildkite-autoscaler:ready-at", "Value": just_now},
        ],
    )

    summary = invoke(monkeypatch, buildkite, [stack.queue(X86)])

    assert summary["queues"][X86]["last_plan"]["booting"] == 1
    assert summary["queues"][X86]["launched"] == []


BAD_REPLIES = {
    "timeout": Reply(body=metrics_body({X86: {"scheduled": 50}}), delay=6),
    "server error": Reply(status=500, body="oops"),
    "unauthorized": Reply(status=401, body={"message": "bad token"}),
    "rate limited": Reply(status=429, body={"message": "slow down"}, headers={"Retry-After": "30"}),
    "not json": Reply(body="<html>maintenance</html>"),
    "negative count": Reply(body=metrics_body({X86: {"scheduled": -3}})),
    "count not a number": Reply(body=metrics_body({X86: {"scheduled": "lots"}})),
    "no jobs section": Reply(body={"agents": {"queues": {}}}),
}


@pytest.mark.parametrize("reply", BAD_REPLIES.values(), ids=BAD_REPLIES.keys())
def test_a_failed_metrics_call_launches_nothing_counts_an_error_and_leaks_no_token(
    reply: Reply,
    stack: Stack,
    buildkite: FakeBuildkite,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    logs: Callable[[], list[dict[str, Any]]],
) -> None:
    buildkite.answer(reply)

    with pytest.raises(scaler.AllPollsFailed) as failure:
        invoke(monkeypatch, buildkite, [stack.queue(X86), stack.queue(ARM)])

    assert fleet_instances(stack) == []
    assert "RunInstances" not in stack.behaviour.operations
    output = capsys.readouterr()
    assert metric_total(output.out, "MetricsApiErrors") == 1
    assert any(line["message"].startswith("metrics API call failed") for line in logs())
    for text in (output.out, output.err, json.dumps(logs()), str(failure.value), repr(failure.value)):
        assert FAKE_TOKEN not in text


def test_the_invocation_succeeds_when_a_later_poll_works_and_honours_retry_after(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    def good(poll_seconds: int) -> Reply:
        headers = {"Buildkite-Agent-Metrics-Poll-Duration": str(poll_seconds)}
        return Reply(body=metrics_body({X86: {"scheduled": 5}}), headers=headers)

    # The last answer asks for a poll later than the budget allows: three polls.
    buildkite.answer(good(1), Reply(status=429, headers={"Retry-After": "2"}, body={}), good(8))
    context = LambdaContext(22)

    summary = invoke(monkeypatch, buildkite, [stack.queue(X86)], context=context)

    assert (summary["polls"], summary["failed_polls"]) == (3, 1)
    # The poll duration the API asked for, then Retry-After (longer than the poll duration).
    assert context.clock.slept == [1, 2]
    assert len(summary["queues"][X86]["launched"]) == 1


def test_capacity_errors_fall_back_to_the_next_type_then_the_next_subnet(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = stack.subnets
    stack.behaviour.no_capacity = {("c7i.4xlarge", None), ("m7i.4xlarge", first)}
    buildkite.serve_metrics({X86: {"scheduled": 10}})

    summary = invoke(monkeypatch, buildkite, [stack.queue(X86)])

    tried = [(call["InstanceType"], call["SubnetId"]) for call in stack.behaviour.run_calls]
    assert tried == [("c7i.4xlarge", first), ("m7i.4xlarge", first), ("c7i.4xlarge", second), ("m7i.4xlarge", second)]
    instances = by_queue(stack, X86)
    assert {(i["InstanceType"], i["SubnetId"]) for i in instances} == {("m7i.4xlarge", second)}
    assert len(instances) == 2
    failures = summary["queues"][X86]["failures"]
    assert [f["code"] for f in failures] == ["InsufficientInstanceCapacity"] * 3


def test_a_partial_launch_carries_the_remainder_to_the_next_type(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack.behaviour.full_launches = False  # moto's own behaviour: one instance per call here
    buildkite.serve_metrics({X86: {"scheduled": 10}})

    summary = invoke(monkeypatch, buildkite, [stack.queue(X86)])

    assert [call["MaxCount"] for call in stack.behaviour.run_calls] == [2, 1]
    assert len(by_queue(stack, X86)) == 2
    assert [f["code"] for f in summary["queues"][X86]["failures"]] == ["PartialLaunch"]


def test_one_queue_failing_to_launch_does_not_stop_the_other(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    buildkite.serve_metrics({X86: {"scheduled": 5}, ARM: {"scheduled": 5}})
    broken_x86 = stack.queue(X86, launch_template_id="lt-0doesnotexist00000")

    summary = invoke(monkeypatch, buildkite, [broken_x86, stack.queue(ARM)])

    assert by_queue(stack, X86) == []
    assert len(by_queue(stack, ARM)) == 1
    assert summary["queues"][X86]["failures"]


@pytest.mark.parametrize("how", ["event", "environment"])
def test_dry_run_reports_the_same_plan_and_launches_nothing(
    how: str, stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    buildkite.serve_metrics({X86: {"scheduled": 12}, ARM: {"scheduled": 2}})
    queues = [stack.queue(X86), stack.queue(ARM)]
    if how == "event":
        summary = invoke(monkeypatch, buildkite, queues, event="scaler-dry-run.json")
    else:
        summary = invoke(monkeypatch, buildkite, queues, DRY_RUN="true")

    assert summary["dry_run"] is True
    assert fleet_instances(stack) == []
    assert stack.behaviour.run_calls == []
    assert summary["queues"][X86]["last_plan"]["launch_burst"] == 3
    assert summary["queues"][ARM]["last_plan"]["launch_burst"] == 1


def test_bad_configuration_fails_at_start_naming_field_and_value(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    queues = [stack.queue(X86), stack.queue(ARM, min_instances=2, max_instances=0)]

    with pytest.raises(ConfigError, match=r"QUEUES\[1\]\(nixos-arm-aws\)\.max_instances must be >= 1 \(got 0\)"):
        invoke(monkeypatch, buildkite, queues)
    with pytest.raises(
        ConfigError, match=r"QUEUES\[1\]\(nixos-arm-aws\)\.max_instances must be >= min_instances \(got 1 < 2\)"
    ):
        invoke(monkeypatch, buildkite, [stack.queue(X86), stack.queue(ARM, min_instances=2, max_instances=1)])
    assert buildkite.requests == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NIX_CACHE_PUBLIC_KEY": "no-key-here"}, "cache_public_key must be a Nix public key"),
        ({"ROOT_MODE": "zfs"}, "root_mode must be one of overlayroot, ebs (got 'zfs')"),
    ],
)
def test_a_value_the_instance_cannot_be_given_fails_at_start(
    env: dict[str, str], message: str, stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The configuration only reads these; instance.settings checks them as the user-data is rendered.
    with pytest.raises(SettingsError, match=re.escape(message)):
        invoke(monkeypatch, buildkite, [stack.queue(X86)], **env)
    assert buildkite.requests == []


def test_a_queue_mixing_architectures_fails_at_start(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    mixed = stack.queue(X86, instance_types=["c7i.4xlarge", "m7g.2xlarge"])

    with pytest.raises(ConfigError, match=r"\(nixos-x86-aws\)\.instance_types\[1\] is an arm64 type, not x86_64"):
        invoke(monkeypatch, buildkite, [mixed])
    assert buildkite.requests == []


def test_the_floor_is_held_with_floor_instances_without_churn(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    buildkite.serve_metrics({})
    queues = [stack.queue(X86, min_instances=2)]
    invoke(monkeypatch, buildkite, queues)
    invoke(monkeypatch, buildkite, queues)
    invoke(monkeypatch, buildkite, queues)

    instances = by_queue(stack, X86)
    assert [tags_of(i)["buildkite-autoscaler:role"] for i in instances] == ["floor", "floor"]
    assert len(stack.behaviour.run_calls) == 1


def test_a_poll_costs_one_metrics_call_and_one_describe_in_steady_state(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    buildkite.serve_metrics({X86: {"scheduled": 3, "total": 5}, ARM: {"running": 1, "total": 5}})

    invoke(monkeypatch, buildkite, [stack.queue(X86), stack.queue(ARM)])

    assert [request["path"] for request in buildkite.requests] == ["/v3/metrics"]
    assert stack.behaviour.operations == ["DescribeInstances"]


def test_user_data_is_gzip_or_cloud_config(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    buildkite.serve_metrics({X86: {"scheduled": 1}})
    invoke(monkeypatch, buildkite, [stack.queue(X86)])
    (instance,) = by_queue(stack, X86)
    data = user_data_of(stack, instance["InstanceId"])
    text = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    assert text.startswith(b"#cloud-config")
    assert FAKE_TOKEN.encode() not in text


def test_a_healthy_invocation_publishes_no_custom_metric(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # CloudWatch bills a custom metric for each hour it is published in: a launch that
    # went well publishes nothing, and the alarms read the missing data as zero.
    summary = launch_busy_queues(stack, buildkite, monkeypatch)
    assert summary["queues"][X86]["launched"]
    assert emf_records(capsys.readouterr().out) == []


# A field a Logs Insights query reads: `metrics.total`, `failures.0.code`, `queue`.
QUERY_FIELD = re.compile(r"\b(?:metrics|plan|pool|failures|fallbacks)(?:\.\w+)+|\b(?:queue|shortfall)\b")


def flattened(record: Any, prefix: str = "") -> set[str]:
    """Field names as Logs Insights discovers them in a JSON line: nested keys and list indexes joined by dots."""
    items = record.items() if isinstance(record, dict) else enumerate(record) if isinstance(record, list) else ()
    names = {prefix} if prefix else set()
    for key, value in items:
        names |= flattened(value, f"{prefix}.{key}" if prefix else str(key))
    return names


def test_every_queue_shows_on_the_dashboard_without_naming_it(
    stack: Stack,
    buildkite: FakeBuildkite,
    monkeypatch: pytest.MonkeyPatch,
    logs: Callable[[], list[dict[str, Any]]],
) -> None:
    gpu = stack.queue("gpu", instance_types=["g5.2xlarge"], agents_per_instance=1)
    buildkite.serve_metrics({X86: {"scheduled": 6}, ARM: {"running": 1, "total": 5}, "gpu": {"scheduled": 1}})
    # Spot refused for the x86 queue: the failures table's fields (failures, fallbacks) are in its line too.
    stack.behaviour.no_spot_capacity = {("c7i.4xlarge", None), ("m7i.4xlarge", None)}
    invoke(monkeypatch, buildkite, [stack.queue(X86, capacity_type="spot"), stack.queue(ARM), gpu])

    template = load_template()
    resolver = Resolver(template, parameter_values(template))
    decisions = [line for line in logs() if line["message"] == "scaling decision"]
    assert {line["queue"] for line in decisions} == {X86, ARM, "gpu"}
    fields = set().union(*(flattened(line) for line in decisions))
    read = {
        field
        for query in dashboard_queries(template, resolver).values()
        if '"scaling decision"' in query
        for field in QUERY_FIELD.findall(query)
    }
    assert {"queue", "metrics.scheduled", "metrics.total", "plan.live", "failures.0.code", "fallbacks.0"} <= read
    assert read <= fields


def test_queues_without_their_own_template_launch_through_the_stacks_template_for_their_architecture(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As the template's Queues parameter gives them: architecture and types, no template, no subnets.
    queues = [
        {"name": name, "architecture": arch, "instance_types": [instance_type], "max_instances": 3}
        for name, arch, instance_type in ((X86, "x86_64", "c7i.2xlarge"), ("arm-r7g", "arm64", "r7g.2xlarge"))
    ]
    queues.append({**queues[0], "name": "gpu", "instance_types": ["g5.2xlarge"]})
    buildkite.serve_metrics({X86: {"scheduled": 1}, "arm-r7g": {"scheduled": 1}, "gpu": {"scheduled": 1}})

    invoke(
        monkeypatch,
        buildkite,
        queues,
        LAUNCH_TEMPLATES=json.dumps(stack.templates),
        SUBNET_IDS=",".join(reversed(stack.subnets)),
    )

    launched = {
        queue: [
            (tags_of(i)["aws:ec2launchtemplate:id"], i["InstanceType"], i["SubnetId"]) for i in by_queue(stack, queue)
        ]
        for queue in (X86, "arm-r7g", "gpu")
    }
    first_subnet = stack.subnets[-1]
    assert launched == {
        X86: [(stack.templates["x86_64"], "c7i.2xlarge", first_subnet)],
        "arm-r7g": [(stack.templates["arm64"], "r7g.2xlarge", first_subnet)],
        "gpu": [(stack.templates["x86_64"], "g5.2xlarge", first_subnet)],
    }
