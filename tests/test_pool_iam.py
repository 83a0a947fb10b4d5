"""The warm pool's permissions, judged on behaviour by the evaluator of tests/support/iam.py.

Only the scaler starts, only this fleet's pool instances; only an instance
stops, only itself and only a pool instance; the reaper may retire a stopped
pool instance but never one tagged complete.
"""

from __future__ import annotations

from collections.abc import Mapping

from tests.support import iam
from tests.support.iam import (
    ALLOWED,
    BOOTING,
    DENIED,
    EXPLICITLY_DENIED,
    PEER,
    SELF,
    Request,
    check,
    instance,
    resource_tags,
    secret,
    self_tag,
    terminate,
)
from tests.support.template import Resolver

from autoscaler.lifecycle import BOOTSTRAP_TAG, FLEET_TAG, ON_EXIT_TAG, ROLE_TAG, STARTED_AT_TAG

resolver = iam.resolver

POOLED = {**BOOTING, ROLE_TAG: "pool", BOOTSTRAP_TAG: "pooled"}
STARTED = {**POOLED, BOOTSTRAP_TAG: "complete"}


def on(action: str, target: str, tags: Mapping[str, str], caller: str = "") -> Request:
    context = {**resource_tags(tags), "ec2:InstanceID": target}
    if caller:
        context["ec2:SourceInstanceARN"] = instance(caller)
    return Request(action, instance(target), context)


def scaler_tag(tags: Mapping[str, str], target_tags: Mapping[str, str]) -> Request:
    """CreateTags by the scaler (no instance credentials) on a fleet instance."""
    return self_tag(PEER, tags, target_tags, caller="")


def test_only_a_pool_instance_stops_and_only_itself(resolver: Resolver) -> None:
    check(
        resolver,
        "AgentRole",
        SELF,
        {
            "stop itself into the pool": (on("ec2:StopInstances", SELF, POOLED, caller=SELF), ALLOWED),
            "tag itself pooled": (self_tag(SELF, {BOOTSTRAP_TAG: "pooled"}, POOLED), ALLOWED),
            "stop itself as a burst instance": (on("ec2:StopInstances", SELF, BOOTING, caller=SELF), DENIED),
            "stop another pool instance": (on("ec2:StopInstances", PEER, POOLED, caller=SELF), DENIED),
            "stop itself in another fleet": (
                on("ec2:StopInstances", SELF, {**POOLED, FLEET_TAG: "other"}, caller=SELF),
                DENIED,
            ),
            "start itself": (on("ec2:StartInstances", SELF, POOLED, caller=SELF), DENIED),
            "set its own on-exit": (self_tag(SELF, {ON_EXIT_TAG: "stop"}, STARTED), DENIED),
        },
    )


def test_the_scaler_starts_only_pooled_instances_of_its_fleet(resolver: Resolver) -> None:
    starting = {BOOTSTRAP_TAG: "pending", STARTED_AT_TAG: "2026-11-26T08:00:00+00:00"}
    check(
        resolver,
        "ScalerRole",
        "scaler",
        {
            "start a pool instance": (on("ec2:StartInstances", PEER, POOLED), ALLOWED),
            "start a burst instance": (on("ec2:StartInstances", PEER, BOOTING), DENIED),
            "start another fleet's pool instance": (
                on("ec2:StartInstances", PEER, {**POOLED, FLEET_TAG: "other"}),
                DENIED,
            ),
            "stop a pool instance": (on("ec2:StopInstances", PEER, STARTED), DENIED),
            "mark a pooled instance starting": (scaler_tag(starting, POOLED), ALLOWED),
            "mark a ready pool instance pending": (scaler_tag(starting, STARTED), DENIED),
            "mark a pooled instance complete": (scaler_tag({BOOTSTRAP_TAG: "complete"}, POOLED), DENIED),
            "mark a pooled instance failed": (scaler_tag({BOOTSTRAP_TAG: "failed"}, POOLED), DENIED),
            "tell a started pool instance to stop on exit": (scaler_tag({ON_EXIT_TAG: "stop"}, STARTED), ALLOWED),
            "tell a burst instance to stop on exit": (scaler_tag({ON_EXIT_TAG: "stop"}, BOOTING), DENIED),
            "on-exit with another key": (scaler_tag({ON_EXIT_TAG: "stop", ROLE_TAG: "burst"}, STARTED), DENIED),
        },
    )


def test_the_reaper_retires_stopped_pool_instances_but_never_a_ready_one(resolver: Resolver) -> None:
    check(
        resolver,
        "ReaperRole",
        "reaper",
        {
            "terminate a pooled instance": (terminate(POOLED), ALLOWED),
            "terminate a pool instance that failed to start": (
                terminate({**POOLED, BOOTSTRAP_TAG: "pending"}),
                ALLOWED,
            ),
            "terminate a started pool instance whose agents are up": (terminate(STARTED), EXPLICITLY_DENIED),
            "read the latest template versions": (Request("ec2:DescribeLaunchTemplateVersions", "*"), ALLOWED),
            "resolve the current image": (
                Request("ssm:GetParameters", secret(resolver.ref("X86ImageParameter"))),
                ALLOWED,
            ),
            "read a secret": (Request("ssm:GetParameters", secret("/buildkite/agent-token")), DENIED),
            "start a pool instance": (on("ec2:StartInstances", PEER, POOLED), DENIED),
        },
    )
