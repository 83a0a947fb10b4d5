"""Spot capacity end to end on moto: spot first over every pool, on-demand fallback, markets visible.

Capacity and prices are injected at the AWS client (botocore event hooks):
moto never runs out of spot capacity and has no spot prices.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from emulators.buildkite import FakeBuildkite
from tests.support.aws import FLEET, Stack, emf_records
from tests.support.scaler import X86, by_queue, tags_of
from tests.support.scaler import invoke as invoke_once

C7I, M7I = "c7i.4xlarge", "m7i.4xlarge"
MARKET_TAG = "buildkite-autoscaler:market"


def invoke(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """One poll with time for the spot price call and a launch after it (two EC2 calls'
    worst case); with less, the scaler skips the prices and
    keeps the configured order. The metrics ask for the next poll in ONE_POLL seconds,
    later than the budget allows, so there is one poll."""
    return invoke_once(*args, budget=40.0, **kwargs)


ONE_POLL = 60


def serve_prices(stack: Stack, prices: dict[tuple[str, int], str] | Exception) -> None:
    """Answer DescribeSpotPriceHistory with these prices per (type, subnet index), as EC2 would."""
    zones = {
        subnet["SubnetId"]: subnet["AvailabilityZone"]
        for subnet in stack.ec2.describe_subnets(SubnetIds=stack.subnets)["Subnets"]
    }

    def answer(**_: Any) -> tuple[Any, dict[str, Any]]:
        if isinstance(prices, Exception):
            raise prices
        history = [
            {"InstanceType": kind, "AvailabilityZone": zones[stack.subnets[index]], "SpotPrice": price}
            for (kind, index), price in prices.items()
        ]
        return SimpleNamespace(status_code=200), {"SpotPriceHistory": history}

    boto3.DEFAULT_SESSION.events.register("before-call.ec2.DescribeSpotPriceHistory", answer)


def pools(stack: Stack) -> list[tuple[str, str, str]]:
    """(market, type, subnet index) of every RunInstances call, in order."""
    return [
        (
            call.get("InstanceMarketOptions", {}).get("MarketType", "on-demand"),
            call["InstanceType"],
            str(stack.subnets.index(call["SubnetId"])),
        )
        for call in stack.behaviour.run_calls
    ]


def decision(logs: Callable[[], list[dict[str, Any]]]) -> dict[str, Any]:
    (line,) = [line for line in logs() if line["message"] == "scaling decision"]
    return line


def spot_shortfall_metric(output: str) -> float:
    """The fleet-wide count the "no spot" alarm watches."""
    return sum(record.get("SpotShortfall", 0) for record in emf_records(output))


def test_spot_spreads_over_every_pool_cheapest_first_with_market_options_and_tags(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    serve_prices(stack, {(M7I, 1): "0.21", (C7I, 0): "0.25", (M7I, 0): "0.30", (C7I, 1): "0.40"})
    buildkite.serve_metrics({X86: {"scheduled": 20}}, poll_seconds=ONE_POLL)

    summary = invoke(monkeypatch, buildkite, [stack.queue(X86, capacity_type="spot")])

    assert pools(stack) == [("spot", M7I, "1"), ("spot", C7I, "0"), ("spot", M7I, "0"), ("spot", C7I, "1")]
    instances = by_queue(stack, X86)
    assert len(instances) == 4
    assert {(i["InstanceType"], i["SubnetId"]) for i in instances} == {
        (kind, subnet) for kind in (C7I, M7I) for subnet in stack.subnets
    }
    assert all(i.get("InstanceLifecycle") == "spot" for i in instances)
    assert all(tags_of(i)[MARKET_TAG] == "spot" for i in instances)
    for call in stack.behaviour.run_calls:
        assert call["InstanceMarketOptions"]["SpotOptions"]["InstanceInterruptionBehavior"] == "terminate"
        spot_request = [spec for spec in call["TagSpecifications"] if spec["ResourceType"] == "spot-instances-request"]
        assert {"Key": "buildkite-autoscaler:fleet", "Value": FLEET} in spot_request[0]["Tags"]
    assert set(summary["queues"][X86]["markets"].values()) == {"spot"}
    assert summary["queues"][X86]["fallbacks"] == []
    assert spot_shortfall_metric(capsys.readouterr().out) == 0


def test_spot_without_capacity_anywhere_falls_back_to_on_demand_in_the_same_poll(
    stack: Stack,
    buildkite: FakeBuildkite,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    logs: Callable[[], list[dict[str, Any]]],
) -> None:
    serve_prices(stack, {(C7I, 0): "0.25"})
    stack.behaviour.no_spot_capacity = {(C7I, None), (M7I, None)}
    buildkite.serve_metrics({X86: {"scheduled": 10}}, poll_seconds=ONE_POLL)

    summary = invoke(monkeypatch, buildkite, [stack.queue(X86, capacity_type="spot")])

    # Every spot pool once (the priced one first), then on-demand in configured order.
    assert pools(stack) == [
        ("spot", C7I, "0"),
        ("spot", M7I, "0"),
        ("spot", C7I, "1"),
        ("spot", M7I, "1"),
        ("on-demand", C7I, "0"),
    ]
    instances = by_queue(stack, X86)
    assert len(instances) == 2
    assert all("InstanceLifecycle" not in i and tags_of(i)[MARKET_TAG] == "on-demand" for i in instances)
    line = decision(logs)
    assert set(line["markets"].values()) == {"on-demand"}
    (reason,) = line["fallbacks"]
    assert "spot short by 2 after InsufficientInstanceCapacity" in reason
    assert "on-demand" in reason
    assert summary["queues"][X86]["fallbacks"] == [reason]
    assert spot_shortfall_metric(capsys.readouterr().out) == 2


def test_a_partly_full_spot_market_tops_up_on_demand(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_prices(stack, {})
    stack.behaviour.no_spot_capacity = {(M7I, None), (C7I, stack.subnets[1])}
    buildkite.serve_metrics({X86: {"scheduled": 15}}, poll_seconds=ONE_POLL)

    summary = invoke(monkeypatch, buildkite, [stack.queue(X86, capacity_type="spot")])

    markets = sorted(summary["queues"][X86]["markets"].values())
    assert markets == ["on-demand", "on-demand", "spot"]
    spot = [i for i in by_queue(stack, X86) if i.get("InstanceLifecycle") == "spot"]
    assert [(i["InstanceType"], i["SubnetId"]) for i in spot] == [(C7I, stack.subnets[0])]


def test_without_fallback_the_shortfall_is_logged_and_retried_next_poll(
    stack: Stack,
    buildkite: FakeBuildkite,
    monkeypatch: pytest.MonkeyPatch,
    logs: Callable[[], list[dict[str, Any]]],
) -> None:
    queue = stack.queue(X86, capacity_type="spot", on_demand_fallback=False)
    serve_prices(stack, {})
    stack.behaviour.no_spot_capacity = {(C7I, None), (M7I, None)}
    buildkite.serve_metrics({X86: {"scheduled": 5}}, poll_seconds=ONE_POLL)

    summary = invoke(monkeypatch, buildkite, [queue])

    assert by_queue(stack, X86) == []
    assert {market for market, _, _ in pools(stack)} == {"spot"}
    (reason,) = decision(logs)["fallbacks"]
    assert "spot short by 1" in reason
    assert "on_demand_fallback is off" in reason
    assert summary["queues"][X86]["launched"] == []

    stack.behaviour.no_spot_capacity = set()
    summary = invoke(monkeypatch, buildkite, [queue])

    (instance,) = by_queue(stack, X86)
    assert instance["InstanceLifecycle"] == "spot"
    assert summary["queues"][X86]["fallbacks"] == []


def test_spot_prices_unavailable_still_launch_spot_in_configured_order(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    denied = ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "no"}}, "DescribeSpotPriceHistory")
    serve_prices(stack, denied)
    buildkite.serve_metrics({X86: {"scheduled": 5}}, poll_seconds=ONE_POLL)

    invoke(monkeypatch, buildkite, [stack.queue(X86, capacity_type="spot")])

    assert pools(stack) == [("spot", C7I, "0")]


def test_a_refused_spot_request_falls_back_without_trying_other_spot_pools(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse_spot(params: dict[str, Any], **_: Any) -> None:
        if "InstanceMarketOptions" in params:
            error = {"Code": "AuthFailure.ServiceLinkedRoleCreationNotPermitted", "Message": "no spot role"}
            raise ClientError({"Error": error}, "RunInstances")

    boto3.DEFAULT_SESSION.events.register("before-parameter-build.ec2.RunInstances", refuse_spot)
    buildkite.serve_metrics({X86: {"scheduled": 5}}, poll_seconds=ONE_POLL)

    summary = invoke(monkeypatch, buildkite, [stack.queue(X86, capacity_type="spot")])

    assert [market for market, _, _ in pools(stack)] == ["spot", "on-demand"]
    assert list(summary["queues"][X86]["markets"].values()) == ["on-demand"]


def test_on_demand_queues_send_no_market_options(
    stack: Stack, buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch
) -> None:
    buildkite.serve_metrics({X86: {"scheduled": 5}}, poll_seconds=ONE_POLL)

    invoke(monkeypatch, buildkite, [stack.queue(X86)])

    (call,) = stack.behaviour.run_calls
    assert "InstanceMarketOptions" not in call
    assert "DescribeSpotPriceHistory" not in stack.behaviour.operations
    assert tags_of(by_queue(stack, X86)[0])[MARKET_TAG] == "on-demand"
