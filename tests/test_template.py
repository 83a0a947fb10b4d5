"""template.yaml, read as data: handlers, environment, IAM, launch templates, schedules, operations.

Policies and environments are checked with their placeholders filled in (a small
resolver of the intrinsic functions the template uses), as AWS would see them.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator, Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
from tests.support.config import OFFICE
from tests.support.template import (
    ACCOUNT,
    FLEET,
    REGION,
    REQUIRED_PARAMETERS,
    TEAM_DEFAULTS,
    Resolver,
    dashboard_body,
    dashboard_queries,
    dashboard_widgets,
    findings_by_statement,
    lambda_environment,
    of_type,
    parameter_values,
    parliament_findings,
    queue_check_properties,
    resolve_role,
    statements,
)
from tools.invoke import load_template

from autoscaler import queue_check
from autoscaler.config import ConfigError, ReaperSettings, ScalerSettings
from autoscaler.lifecycle import AGENT_VERSION_TAG, BOOTSTRAP_TAG, FLEET_TAG, NIX_VERSION_TAG, READY_AT_TAG
from instance.settings import bake_values

ROOT = Path(__file__).resolve().parent.parent
QUEUE_NAMES = ("nixos-x86-aws", "nixos-arm-aws")
ARCHES = ("x86_64", "arm64")

# Three queues, one on a third instance family (x86 GPUs), with non-default settings.
THREE_QUEUES: list[dict[str, Any]] = [
    {
        "name": "nixos-x86-aws",
        "architecture": "x86_64",
        "instance_types": ["m7i.4xlarge", "m6i.4xlarge"],
        "min_instances": 1,
        "max_instances": 7,
        "agents_per_instance": 3,
        "idle_timeout_seconds": 300,
        "max_uptime_seconds": 0,
        "include_waiting": True,
        "warm_pool_size": 3,
        "schedules": [OFFICE],
    },
    {"name": "nixos-arm-aws", "architecture": "arm64", "instance_types": ["r7g.2xlarge"], "max_instances": 2},
    {
        "name": "gpu",
        "architecture": "x86_64",
        "instance_types": ["g5.2xlarge", "g6.2xlarge"],
        "max_instances": 2,
        "agents_per_instance": 1,
        "subnet_ids": ["subnet-0ccc3333"],
    },
]
CUSTOM: dict[str, Any] = {"Queues": json.dumps(THREE_QUEUES), "NixCacheRegion": "us-west-2"}
ARCH_TEMPLATES = {"x86_64": "X86LaunchTemplate", "arm64": "ArmLaunchTemplate"}

# parliament findings that are wrong about this template, each with the reason.
FALSE_POSITIVES = {
    ("ScalerRole", "LaunchFromStackTemplates", "RESOURCE_MISMATCH"): (
        "parliament wants every RunInstances resource type in each statement; the instance and volume "
        "are in LaunchTaggedInstances, because only they carry the request's tags. Together the two "
        "statements name every type (test_run_instances_statements_together_name_every_resource_type)."
    ),
    ("ScalerRole", "LaunchTaggedInstances", "RESOURCE_MISMATCH"): (
        "The same split seen from the other statement: image, subnet, network interface and security "
        "group are in LaunchFromStackTemplates."
    ),
    ("ScalerRole", "LaunchTaggedVolumes", "RESOURCE_MISMATCH"): (
        "The volumes alone, each with the fleet tag and encrypted; the other resource types are in the "
        "other RunInstances statements."
    ),
    ("ScalerRole", "LaunchSpotRequests", "RESOURCE_MISMATCH"): (
        "The spot instance request alone: it carries only the request's tags (no ec2:LaunchTemplate), "
        "so it cannot share a statement that requires the launch template."
    ),
    ("ScalerRole", "LaunchFleetImages", "RESOURCE_MISMATCH"): (
        "The image alone, granted by owner and fleet tag (a baked image rotates weekly); the other "
        "resource types are in the other RunInstances statements."
    ),
    ("ScalerRole", "LaunchStockImages", "RESOURCE_MISMATCH"): (
        "The image alone, granted by Canonical's owner id (the stock fallback); the other resource "
        "types are in the other RunInstances statements."
    ),
    ("AgentRole", "TagSelfBootstrapState", "UNKNOWN_CONDITION_FOR_ACTION"): (
        "ec2:SourceInstanceARN is documented as a key of every EC2 action called with instance role "
        "credentials, but parliament's data lists it for none; the independent evaluator in "
        "test_iam_behaviour.py accepts it for CreateTags and shows what the statement allows."
    ),
    ("AgentRole", "StopSelfIntoPool", "UNKNOWN_CONDITION_FOR_ACTION"): (
        "The same self-scoping key: a pool instance may stop only itself."
    ),
}

# ----------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def resolver(template: dict[str, Any]) -> Resolver:
    return Resolver(template, parameter_values(template))


def listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def lambda_roles(template: Mapping[str, Any]) -> list[str]:
    roles = {
        resolve_role(spec["Properties"]["Role"]) for spec in of_type(template, "AWS::Serverless::Function").values()
    }
    return sorted(roles)


def allows(statement: Mapping[str, Any], action: str) -> bool:
    return statement["Effect"] == "Allow" and any(
        fnmatchcase(action.lower(), pattern.lower()) for pattern in listed(statement["Action"])
    )


def arn_type(arn: str) -> str:
    """arn:aws:ec2:region:account:instance/* -> instance."""
    return arn.split(":", 5)[5].split("/", 1)[0]


def launch_template_arns(resolver: Resolver) -> set[str]:
    return {
        f"arn:aws:ec2:{REGION}:{ACCOUNT}:launch-template/{resolver.ref(name)}"
        for name in ("X86LaunchTemplate", "ArmLaunchTemplate")
    }


def identity_policies(template: Mapping[str, Any], resolver: Resolver) -> Iterator[tuple[str, dict[str, Any]]]:
    for role, spec in of_type(template, "AWS::IAM::Role").items():
        for policy in spec["Properties"].get("Policies", []):
            yield role, resolver.resolve(policy["PolicyDocument"])


# ----------------------------------------------------------------- functions


@pytest.mark.parametrize("function", ["ScalerFunction", "ReaperFunction"])
def test_handler_resolves_to_a_callable_in_the_package(template: dict[str, Any], function: str) -> None:
    module_name, _, attribute = template["Resources"][function]["Properties"]["Handler"].rpartition(".")
    assert module_name.startswith("autoscaler.")
    assert callable(getattr(importlib.import_module(module_name), attribute))


def test_functions_run_python313_on_arm64_from_one_shared_build(template: dict[str, Any]) -> None:
    function_globals = template["Globals"]["Function"]
    assert function_globals["Runtime"] == "python3.13"
    assert function_globals["Architectures"] == ["arm64"]
    functions = of_type(template, "AWS::Serverless::Function").values()
    # One build method and context for all: the same artifact (SAM builds it once per function).
    build_keys = ("BuildMethod", "ContextPath", "WorkingDirectory")
    assert len({json.dumps({key: spec["Metadata"][key] for key in build_keys}) for spec in functions}) == 1
    assert all(spec["Metadata"]["BuildMethod"] == "makefile" for spec in functions)
    assert all("CodeUri" not in spec["Properties"] and "Runtime" not in spec["Properties"] for spec in functions)


def test_code_uri_is_small_so_sam_does_not_copy_the_virtualenvs(template: dict[str, Any]) -> None:
    code_dir = ROOT / template["Globals"]["Function"]["CodeUri"]
    assert code_dir.resolve() != ROOT
    assert not list(code_dir.glob(".venv*"))


@pytest.mark.parametrize(
    "overrides", [{}, CUSTOM, {"SecurityGroupId": "sg-0existing1"}], ids=["defaults", "three-queues", "own-sg"]
)
def test_scaler_configuration_loads_from_the_template_environment(
    template: dict[str, Any], overrides: dict[str, Any]
) -> None:
    values = parameter_values(template, **overrides)
    resolver = Resolver(template, values)
    settings = ScalerSettings.from_env(lambda_environment(template, resolver, "ScalerFunction"))

    assert settings.fleet_name == FLEET
    given = json.loads(values["Queues"])
    assert [queue.name for queue in settings.queues] == [queue["name"] for queue in given]
    for queue, raw in zip(settings.queues, given, strict=True):
        # Launch templates are per architecture: the queue's names the stack's template.
        assert queue.launch_template_id == resolver.ref(ARCH_TEMPLATES[raw["architecture"]])
        assert list(queue.instance_types) == raw["instance_types"]
        assert list(queue.subnet_ids) == raw.get("subnet_ids", values["SubnetIds"])
        for field in ("min_instances", "max_instances", "agents_per_instance", "include_waiting", "warm_pool_size"):
            if field in raw:
                assert getattr(queue, field) == raw[field]
        assert [schedule.name for schedule in queue.schedules] == [s["name"] for s in raw.get("schedules", [])]
    assert settings.user_data.cache_region == (values["NixCacheRegion"] or REGION)
    assert settings.user_data.cache_bucket == values["NixCacheBucket"]
    assert settings.agent_token_parameter == values["AgentTokenParameter"]
    assert settings.dry_run is (values["DryRun"] == "true")


def test_the_default_queues_are_the_teams_two(template: dict[str, Any], resolver: Resolver) -> None:
    settings = ScalerSettings.from_env(lambda_environment(template, resolver, "ScalerFunction"))
    loaded = {
        queue.name: (
            queue.architecture,
            queue.instance_types,
            queue.min_instances,
            queue.max_instances,
            queue.agents_per_instance,
            queue.idle_timeout_seconds,
            queue.max_uptime_seconds,
            queue.include_waiting,
        )
        for queue in settings.queues
    }
    assert loaded == TEAM_DEFAULTS


@pytest.mark.parametrize("overrides", [{}, CUSTOM], ids=["defaults", "three-queues"])
def test_the_deploy_checks_exactly_what_the_scaler_will_read(
    template: dict[str, Any], overrides: dict[str, Any]
) -> None:
    resolver = Resolver(template, parameter_values(template, **overrides))
    properties = queue_check_properties(template, resolver)
    environment = lambda_environment(template, resolver, "ScalerFunction")

    assert properties == {name: environment[name] for name in properties}
    # The queue settings, and what names the Buildkite stacks the scaler lists (observe mode).
    stacks = {"FLEET_NAME", "BUILDKITE_AGENT_TOKEN_PARAMETER", "BUILDKITE_AGENT_ENDPOINT"}
    assert set(properties) == {"QUEUES", "LAUNCH_TEMPLATES", "SUBNET_IDS", *stacks}
    queue_check.check(properties)
    # The scaler is configured only once the check passed (a refused list rolls the deploy back).
    assert template["Resources"]["ScalerFunction"]["DependsOn"] == "QueueCheck"
    check = template["Resources"]["QueueCheck"]
    assert check["Properties"]["ServiceToken"] == {"Fn::GetAtt": ["QueueCheckFunction", "Arn"]}
    assert int(check["Properties"]["ServiceTimeout"]) <= 300


@pytest.mark.parametrize(
    ("queues", "message"),
    [
        (
            [{**THREE_QUEUES[1], "min_instances": 3}],
            r"QUEUES\[0\]\(nixos-arm-aws\)\.max_instances must be >= min_instances \(got 2 < 3\)",
        ),
        ([{**THREE_QUEUES[2], "architecture": "arm64"}], r"QUEUES\[0\]\(gpu\)\.instance_types\[0\] is an x86_64 type"),
        ([{**THREE_QUEUES[2], "launch_template_id": "lt-0elsewhere"}], r"QUEUES\[0\]\(gpu\)\.launch_template_id must"),
    ],
)
def test_a_queue_list_that_cannot_work_is_refused_at_deploy(
    template: dict[str, Any], queues: list[dict[str, Any]], message: str
) -> None:
    resolver = Resolver(template, parameter_values(template, Queues=json.dumps(queues)))
    with pytest.raises(ConfigError, match=message):
        queue_check.check(queue_check_properties(template, resolver))


def test_the_queues_parameter_must_look_like_a_json_array(template: dict[str, Any]) -> None:
    # CloudFormation's own pattern check, before any resource changes; Java's regex agrees here.
    pattern = re.compile(template["Parameters"]["Queues"]["AllowedPattern"])
    assert pattern.fullmatch(template["Parameters"]["Queues"]["Default"])
    assert pattern.fullmatch(json.dumps(THREE_QUEUES, indent=2))
    assert not pattern.fullmatch("nixos-x86-aws")
    assert not pattern.fullmatch('{"name": "nixos-x86-aws"}')


def test_reaper_configuration_loads_from_the_template_environment(template: dict[str, Any], resolver: Resolver) -> None:
    settings = ReaperSettings.from_env(lambda_environment(template, resolver, "ReaperFunction"))
    assert settings.fleet_name == FLEET
    # The same queues as the scaler's, so both agree on the pool sizes.
    assert settings.queues == ScalerSettings.from_env(lambda_environment(template, resolver, "ScalerFunction")).queues
    assert settings.pool_max_age_seconds == int(resolver.parameters["PoolMaxAgeSeconds"])
    assert settings.max_terminations == int(resolver.parameters["ReaperMaxTerminations"])
    assert settings.bootstrap_timeout_seconds == int(resolver.parameters["BootstrapTimeoutSeconds"])


class RecordingEnvironment(dict[str, str]):
    """An environment that records every variable the configuration asks for."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)


@pytest.mark.parametrize(
    ("function", "settings"), [("ScalerFunction", ScalerSettings), ("ReaperFunction", ReaperSettings)]
)
def test_every_variable_the_configuration_reads_is_set(
    template: dict[str, Any], resolver: Resolver, function: str, settings: type
) -> None:
    environment = RecordingEnvironment(lambda_environment(template, resolver, function))
    settings.from_env(environment)
    # Optional ones too: the deployment, not a code default, decides them.
    assert environment.asked - set(environment) == set()


def test_scaler_timeout_concurrency_and_schedule(template: dict[str, Any]) -> None:
    scaler = template["Resources"]["ScalerFunction"]["Properties"]
    assert scaler["Timeout"] == 70
    assert scaler["ReservedConcurrentExecutions"] == 1
    assert scaler["EventInvokeConfig"]["MaximumRetryAttempts"] == 0
    (event,) = scaler["Events"].values()
    assert event["Type"] == "ScheduleV2"
    properties = event["Properties"]
    assert properties["ScheduleExpression"] == "rate(1 minute)"
    assert properties["RetryPolicy"]["MaximumRetryAttempts"] == 0
    assert properties["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert json.loads(properties["Input"]) == {"scheduled_time": "<aws.scheduler.scheduled-time>", "dry_run": False}


def test_reaper_schedule(template: dict[str, Any]) -> None:
    reaper = template["Resources"]["ReaperFunction"]["Properties"]
    (event,) = reaper["Events"].values()
    assert event["Type"] == "ScheduleV2"
    assert event["Properties"]["ScheduleExpression"] == "rate(5 minutes)"
    assert json.loads(event["Properties"]["Input"])["dry_run"] is False
    assert reaper["Timeout"] >= 60


def test_schedules_pause_together(template: dict[str, Any]) -> None:
    states = [
        event["Properties"]["State"]
        for spec in of_type(template, "AWS::Serverless::Function").values()
        for event in spec["Properties"].get("Events", {}).values()
    ]
    assert states == [{"Ref": "SchedulesState"}] * 2
    assert template["Parameters"]["SchedulesState"]["AllowedValues"] == ["ENABLED", "DISABLED"]


def test_each_function_logs_to_its_own_group_with_retention(template: dict[str, Any], resolver: Resolver) -> None:
    for spec in of_type(template, "AWS::Serverless::Function").values():
        group = spec["Properties"]["LoggingConfig"]["LogGroup"]["Ref"]
        assert template["Resources"][group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    groups = {resolver.physical_id(name) for name in of_type(template, "AWS::Logs::LogGroup")}
    assert len(groups) == len(of_type(template, "AWS::Serverless::Function"))


# ----------------------------------------------------------------- IAM


def test_policies_pass_parliament_but_for_listed_false_positives(template: dict[str, Any], resolver: Resolver) -> None:
    found: set[tuple[str, str, str]] = set()
    for role, document in identity_policies(template, resolver):
        by_statement = findings_by_statement(role, document)
        # Nothing about the policy as a whole beyond what its statements show.
        assert {f.issue for f in parliament_findings(document)} == {issue for _, _, issue in by_statement}
        found |= by_statement
    assert found - set(FALSE_POSITIVES) == set()
    # And the list does not outlive the findings it explains.
    assert set(FALSE_POSITIVES) - found == set()


def test_run_instances_statements_together_name_every_resource_type(
    template: dict[str, Any], resolver: Resolver
) -> None:
    launch = [s for s in statements(template, resolver, "ScalerRole") if allows(s, "ec2:RunInstances")]
    resources = sorted({arn for s in launch for arn in listed(s["Resource"])})
    merged = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "ec2:RunInstances", "Resource": resources}],
    }
    assert parliament_findings(merged) == []
    required = {"image", "instance", "volume", "network-interface", "security-group", "subnet", "launch-template"}
    assert {arn_type(arn) for arn in resources} >= required


def through_launch_templates(statement: Mapping[str, Any]) -> bool:
    """A RunInstances grant on a resource that carries ec2:LaunchTemplate (all but a spot
    launch's spot instance request, which carries only the request's tags)."""
    return allows(statement, "ec2:RunInstances") and any(
        arn_type(arn) != "spot-instances-request" for arn in listed(statement["Resource"])
    )


def test_run_instances_only_with_the_stacks_launch_templates(template: dict[str, Any], resolver: Resolver) -> None:
    stack_templates = launch_template_arns(resolver)
    for role in lambda_roles(template):
        for statement in statements(template, resolver, role):
            if through_launch_templates(statement):
                assert set(listed(statement["Condition"]["ArnEquals"]["ec2:LaunchTemplate"])) == stack_templates
                named = {arn for arn in listed(statement["Resource"]) if arn_type(arn) == "launch-template"}
                assert named <= stack_templates
                assert "*" not in listed(statement["Resource"])
    launch = [s for s in statements(template, resolver, "ScalerRole") if allows(s, "ec2:RunInstances")]
    assert {
        arn for s in launch for arn in listed(s["Resource"]) if arn_type(arn) == "launch-template"
    } == stack_templates


def test_every_queue_of_three_launches_through_a_template_the_scaler_may_use(template: dict[str, Any]) -> None:
    resolver = Resolver(template, parameter_values(template, **CUSTOM))
    settings = ScalerSettings.from_env(lambda_environment(template, resolver, "ScalerFunction"))
    allowed = launch_template_arns(resolver)
    used = {f"arn:aws:ec2:{REGION}:{ACCOUNT}:launch-template/{queue.launch_template_id}" for queue in settings.queues}
    # Three queues, two architectures: the two stack templates, and the IAM grant is exactly those.
    assert used == allowed
    for statement in statements(template, resolver, "ScalerRole"):
        if through_launch_templates(statement):
            assert set(listed(statement["Condition"]["ArnEquals"]["ec2:LaunchTemplate"])) == allowed


def test_the_queue_check_may_only_write_its_logs_and_read_the_agent_token(
    template: dict[str, Any], resolver: Resolver
) -> None:
    logs, read, decrypt = statements(template, resolver, "QueueCheckRole")
    assert set(listed(logs["Action"])) == {"logs:CreateLogStream", "logs:PutLogEvents"}
    assert logs["Resource"] == resolver.attribute("QueueCheckLogGroup", "Arn")
    # The scaler's own statements for the token (it registers the queues' Buildkite stacks).
    scaler = {statement.get("Sid"): statement for statement in statements(template, resolver, "ScalerRole")}
    assert (read, decrypt) == (scaler["ReadAgentToken"], scaler["DecryptAgentToken"])


def test_instances_and_volumes_are_launched_only_with_the_fleet_tag(
    template: dict[str, Any], resolver: Resolver
) -> None:
    for role in lambda_roles(template):
        for statement in statements(template, resolver, role):
            if not allows(statement, "ec2:RunInstances"):
                continue
            created = [arn for arn in listed(statement["Resource"]) if arn_type(arn) in ("instance", "volume")]
            if created:
                assert statement["Condition"]["StringEquals"][f"aws:RequestTag/{FLEET_TAG}"] == FLEET


POOL_TAGGING = {"MarkPoolInstancesStarting", "TellPoolInstancesOnExit"}


def test_lambdas_tag_only_while_launching_or_the_fleets_pool_instances(
    template: dict[str, Any], resolver: Resolver
) -> None:
    tagging = [
        statement
        for role in lambda_roles(template)
        for statement in statements(template, resolver, role)
        if allows(statement, "ec2:CreateTags")
    ]
    assert {s["Sid"] for s in tagging} == {"TagOnlyAtLaunch", *POOL_TAGGING}
    for statement in tagging:
        if statement["Sid"] in POOL_TAGGING:
            assert statement["Condition"]["StringEquals"][f"aws:ResourceTag/{FLEET_TAG}"] == FLEET
            assert statement["Condition"]["StringEquals"]["aws:ResourceTag/buildkite-autoscaler:role"] == "pool"
        else:
            assert statement["Condition"]["StringEquals"]["ec2:CreateAction"] == "RunInstances"


def test_the_scaler_starts_only_pool_instances_it_may_mark_as_starting(
    template: dict[str, Any], resolver: Resolver
) -> None:
    scaler = {s["Sid"]: s for s in statements(template, resolver, "ScalerRole")}
    start = scaler["StartPoolInstances"]
    assert listed(start["Action"]) == ["ec2:StartInstances"]
    assert start["Condition"] == {
        "StringEquals": {f"aws:ResourceTag/{FLEET_TAG}": FLEET, "aws:ResourceTag/buildkite-autoscaler:role": "pool"}
    }
    # Only an instance that tagged itself pooled (no agent) can be made pending: never a complete one.
    mark = scaler["MarkPoolInstancesStarting"]["Condition"]
    assert mark["StringEquals"]["aws:ResourceTag/buildkite-autoscaler:bootstrap"] == "pooled"
    assert mark["StringEquals"]["aws:RequestTag/buildkite-autoscaler:bootstrap"] == "pending"
    assert set(mark["ForAllValues:StringEquals"]["aws:TagKeys"]) == {BOOTSTRAP_TAG, "buildkite-autoscaler:started-at"}
    on_exit = scaler["TellPoolInstancesOnExit"]["Condition"]
    assert on_exit["ForAllValues:StringEquals"]["aws:TagKeys"] == ["buildkite-autoscaler:on-exit"]
    stopping = [s for r in lambda_roles(template) for s in statements(template, resolver, r)]
    assert not any(allows(s, "ec2:StopInstances") for s in stopping)


@pytest.mark.parametrize("action", ["ec2:TerminateInstances", "ec2:GetConsoleOutput"])
def test_terminate_and_console_output_only_on_the_fleets_instances(
    template: dict[str, Any], resolver: Resolver, action: str
) -> None:
    granting = [
        statement
        for role in lambda_roles(template)
        for statement in statements(template, resolver, role)
        if allows(statement, action)
    ]
    assert granting, f"no Lambda may {action}"
    for statement in granting:
        assert statement["Condition"]["StringEquals"][f"aws:ResourceTag/{FLEET_TAG}"] == FLEET
        assert {arn_type(arn) for arn in listed(statement["Resource"])} == {"instance"}


def test_the_reaper_can_never_terminate_an_instance_whose_bootstrap_completed(
    template: dict[str, Any], resolver: Resolver
) -> None:
    # IAM evaluates the tag when TerminateInstances is called, so an instance that
    # completes between the reaper's listing and its termination is safe.
    (deny,) = [s for s in statements(template, resolver, "ReaperRole") if s["Effect"] == "Deny"]
    assert listed(deny["Action"]) == ["ec2:TerminateInstances"]
    assert {arn_type(arn) for arn in listed(deny["Resource"])} == {"instance"}
    assert deny["Condition"] == {"StringEquals": {"aws:ResourceTag/buildkite-autoscaler:bootstrap": "complete"}}


def test_scaler_passes_only_the_agent_role_to_ec2(template: dict[str, Any], resolver: Resolver) -> None:
    passing = [
        s for r in lambda_roles(template) for s in statements(template, resolver, r) if allows(s, "iam:PassRole")
    ]
    assert len(passing) == 1
    assert passing[0]["Resource"] == resolver.attribute("AgentRole", "Arn")
    assert passing[0]["Condition"]["StringEquals"]["iam:PassedToService"] == "ec2.amazonaws.com"


def test_scaler_reads_and_decrypts_only_the_agent_token(template: dict[str, Any], resolver: Resolver) -> None:
    token = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/buildkite/agent-token"
    images = [f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/buildkite-autoscaler/{FLEET}/image/{a}" for a in ARCHES]
    scaler = statements(template, resolver, "ScalerRole")
    reading = [s for s in scaler if any(action.startswith("ssm:") for action in listed(s["Action"]))]
    # The token, decrypted; the image parameters (plain AMI ids), which EC2 resolves with
    # the scaler's permissions at RunInstances.
    assert [(listed(s["Action"]), s["Resource"]) for s in reading] == [
        (["ssm:GetParameters"], images),
        (["ssm:GetParameter"], token),
    ]
    (decrypt,) = [s for s in scaler if allows(s, "kms:Decrypt")]
    assert decrypt["Condition"]["StringEquals"]["kms:EncryptionContext:PARAMETER_ARN"] == token
    assert decrypt["Condition"]["StringEquals"]["kms:ViaService"] == f"ssm.{REGION}.amazonaws.com"
    assert not any(allows(s, "ssm:GetParameter") for s in statements(template, resolver, "ReaperRole"))


def test_agent_reads_exactly_the_three_secrets(template: dict[str, Any], resolver: Resolver) -> None:
    secrets = {
        f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{resolver.parameters[name]}"
        for name in ("AgentTokenParameter", "SshKeyParameter", "NixSigningKeyParameter")
    }
    agent = statements(template, resolver, "AgentRole")
    reading = [s for s in agent if any(action.startswith("ssm:") for action in listed(s["Action"]))]
    assert {arn for s in reading for arn in listed(s["Resource"])} == secrets
    (decrypt,) = [s for s in agent if allows(s, "kms:Decrypt")]
    assert set(decrypt["Condition"]["StringEquals"]["kms:EncryptionContext:PARAMETER_ARN"]) == secrets


def test_agent_uses_only_the_cache_bucket(template: dict[str, Any], resolver: Resolver) -> None:
    storage = [
        s for s in statements(template, resolver, "AgentRole") if any(a.startswith("s3:") for a in listed(s["Action"]))
    ]
    resources = {arn for s in storage for arn in listed(s["Resource"])}
    assert resources == {"arn:aws:s3:::test-nix-cache", "arn:aws:s3:::test-nix-cache/*"}
    assert {a for s in storage for a in listed(s["Action"])} >= {"s3:GetObject", "s3:PutObject", "s3:ListBucket"}


def test_agent_tags_only_itself_and_only_its_bootstrap_state_and_versions(
    template: dict[str, Any], resolver: Resolver
) -> None:
    agent = statements(template, resolver, "AgentRole")
    (tagging,) = [s for s in agent if allows(s, "ec2:CreateTags")]
    # Documented keys only (Access Analyzer calls aws:ARN unsupported); behaviour in test_iam_behaviour.py.
    assert tagging["Condition"]["ArnEquals"] == {
        "ec2:SourceInstanceARN": f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/${{ec2:InstanceID}}"
    }
    assert "aws:ARN" not in json.dumps(statements(template, resolver, "AgentRole"))
    assert set(tagging["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"]) == {
        BOOTSTRAP_TAG,
        READY_AT_TAG,
        AGENT_VERSION_TAG,
        NIX_VERSION_TAG,
    }
    ec2_actions = {a for s in agent for a in listed(s["Action"]) if a.startswith("ec2:")}
    assert ec2_actions == {"ec2:CreateTags", "ec2:StopInstances"}


def test_only_a_pool_instance_stops_and_only_itself(template: dict[str, Any], resolver: Resolver) -> None:
    (stopping,) = [s for s in statements(template, resolver, "AgentRole") if allows(s, "ec2:StopInstances")]
    assert stopping["Condition"] == {
        "ArnEquals": {"ec2:SourceInstanceARN": f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/${{ec2:InstanceID}}"},
        "StringEquals": {
            f"aws:ResourceTag/{FLEET_TAG}": FLEET,
            "aws:ResourceTag/buildkite-autoscaler:role": "pool",
        },
    }


def test_no_statement_allows_every_action_or_uses_not_action(template: dict[str, Any], resolver: Resolver) -> None:
    for _, document in identity_policies(template, resolver):
        for statement in document["Statement"]:
            assert "NotAction" not in statement
            assert "NotResource" not in statement
            assert all("*" not in action for action in listed(statement["Action"]))


# ----------------------------------------------------------------- launch templates and network


@pytest.mark.parametrize("launch_template", ["X86LaunchTemplate", "ArmLaunchTemplate"])
def test_launch_template_requires_imdsv2_and_encrypts_the_root_volume(
    template: dict[str, Any], resolver: Resolver, launch_template: str
) -> None:
    data = resolver.resolve(template["Resources"][launch_template]["Properties"]["LaunchTemplateData"])
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpEndpoint"] == "enabled"
    # A pool instance reads its on-exit tag from the instance metadata.
    assert data["MetadataOptions"]["InstanceMetadataTags"] == "enabled"
    (root,) = data["BlockDeviceMappings"]
    # Canonical's Ubuntu root device: any other name would add a second, unencrypted-by-this volume.
    assert root["DeviceName"] == "/dev/sda1"
    assert root["Ebs"]["Encrypted"] is True
    assert root["Ebs"]["VolumeType"] == "gp3"
    assert root["Ebs"]["DeleteOnTermination"] is True
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert data["IamInstanceProfile"]["Arn"] == resolver.attribute("AgentInstanceProfile", "Arn")
    tagged = {spec["ResourceType"]: {t["Key"]: t["Value"] for t in spec["Tags"]} for spec in data["TagSpecifications"]}
    assert tagged == {"instance": {FLEET_TAG: FLEET}, "volume": {FLEET_TAG: FLEET}}


@pytest.mark.parametrize(("prefix", "arch"), [("X86", "x86_64"), ("Arm", "arm64")])
def test_launch_templates_resolve_the_pipelines_parameter_which_starts_as_the_stock_ami(
    template: dict[str, Any], resolver: Resolver, prefix: str, arch: str
) -> None:
    name = f"/buildkite-autoscaler/{FLEET}/image/{arch}"
    data = resolver.resolve(template["Resources"][f"{prefix}LaunchTemplate"]["Properties"]["LaunchTemplateData"])
    # Literal, for EC2 to resolve at each launch (a {{resolve:ssm}} would be fixed at deploy).
    assert data["ImageId"] == f"resolve:ssm:{name}"
    parameter = resolver.resolve(template["Resources"][f"{prefix}ImageParameter"]["Properties"])
    assert parameter["Name"] == name
    # The fallback: the stock AMI, which the custom resource writes only where the parameter
    # is missing (tests/test_image_parameter.py: a later deploy keeps the baked image).
    stock = template["Parameters"][f"{prefix}ImageId"]["Default"]
    assert parameter["StockImageId"] == "{{resolve:ssm:" + stock + "}}"
    assert parameter["ServiceToken"] == resolver.attribute("ImageParameterFunction", "Arn")
    # The pipeline's distribution overwrites the same parameter with each new image.
    distribution = resolver.resolve(template["Resources"][f"{prefix}ImageDistribution"]["Properties"])
    (target,) = distribution["Distributions"]
    assert target["SsmParameterConfigurations"] == [{"ParameterName": name, "DataType": "aws:ec2:image"}]
    assert target["AmiDistributionConfiguration"]["AmiTags"] == {FLEET_TAG: FLEET}


def test_the_stock_amis_are_canonicals_ubuntu_2404(template: dict[str, Any]) -> None:
    assert template["Parameters"]["X86ImageId"]["Default"].endswith("/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id")
    assert template["Parameters"]["ArmImageId"]["Default"].endswith("/24.04/stable/current/arm64/hvm/ebs-gp3/ami-id")
    assert all(
        template["Parameters"][p]["Default"].startswith("/aws/service/canonical/") for p in ("X86ImageId", "ArmImageId")
    )


@pytest.mark.parametrize(("own", "expected"), [("", "sg-0agentsecuritygroup"), ("sg-0existing1", "sg-0existing1")])
def test_launch_templates_use_the_stacks_or_the_given_security_group(
    template: dict[str, Any], own: str, expected: str
) -> None:
    resolver = Resolver(template, parameter_values(template, SecurityGroupId=own))
    for launch_template in of_type(template, "AWS::EC2::LaunchTemplate"):
        data = resolver.resolve(template["Resources"][launch_template]["Properties"]["LaunchTemplateData"])
        assert data["SecurityGroupIds"] == [expected]


def test_security_group_is_egress_only(template: dict[str, Any]) -> None:
    (group,) = of_type(template, "AWS::EC2::SecurityGroup").values()
    assert "SecurityGroupIngress" not in group["Properties"]
    assert not of_type(template, "AWS::EC2::SecurityGroupIngress")
    assert {(rule["FromPort"], rule["ToPort"]) for rule in group["Properties"]["SecurityGroupEgress"]} == {
        (443, 443),
        (80, 80),
        (22, 22),
    }


# ----------------------------------------------------------------- alarms and dashboard


def emitted_metric_names() -> str:
    """The code that emits metrics: the Lambdas' package, and the instance's scripts."""
    sources = [*(ROOT / "functions" / "autoscaler").glob("*.py"), *(ROOT / "userdata").glob("*.sh")]
    return "\n".join(path.read_text(encoding="utf-8") for path in sources)


def test_alarms_cover_function_launch_and_metrics_api_errors(template: dict[str, Any], resolver: Resolver) -> None:
    alarms = {
        name: resolver.resolve(spec["Properties"]) for name, spec in of_type(template, "AWS::CloudWatch::Alarm").items()
    }
    watched = {(alarm["Namespace"], alarm["MetricName"], alarm["Dimensions"][0]["Value"]) for alarm in alarms.values()}
    assert watched >= {
        ("AWS/Lambda", "Errors", resolver.ref("ScalerFunction")),
        ("AWS/Lambda", "Errors", resolver.ref("ReaperFunction")),
        ("BuildkiteAutoscaler", "LaunchShortfall", FLEET),
        ("BuildkiteAutoscaler", "MetricsApiErrors", FLEET),
        ("BuildkiteAutoscaler", "SpotShortfall", FLEET),
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible", resolver.attribute("ImageBakeFailures", "QueueName")),
    }
    # Fallbacks and partial launches that were then completed are no alarm (tests/test_poll_budget.py).
    assert ("BuildkiteAutoscaler", "LaunchErrors", FLEET) not in watched
    source = emitted_metric_names()
    for alarm in alarms.values():
        if alarm["Namespace"] == "BuildkiteAutoscaler":
            assert [d["Name"] for d in alarm["Dimensions"]] == ["fleet"]
            assert f'"{alarm["MetricName"]}"' in source


@pytest.mark.parametrize(("email", "notified"), [("", False), ("ops@example.com", True)])
def test_alarms_notify_the_topic_only_when_an_email_is_given(
    template: dict[str, Any], email: str, notified: bool
) -> None:
    resolver = Resolver(template, parameter_values(template, AlarmEmail=email))
    for spec in of_type(template, "AWS::CloudWatch::Alarm").values():
        actions = resolver.resolve(spec["Properties"]).get("AlarmActions")
        assert actions == ([resolver.ref("AlarmTopic")] if notified else None)
    assert template["Resources"]["AlarmTopic"]["Condition"] == "HasAlarmEmail"


def dashboard_metrics(template: Mapping[str, Any], resolver: Resolver) -> dict[str, list[list[Any]]]:
    """Each metric widget's title and its explicit metrics, with CloudWatch's "." / "..." shorthand expanded."""
    return {widget["title"]: expand(widget["metrics"]) for widget in dashboard_widgets(template, resolver, "metric")}


def expand(rows: list[list[Any]]) -> list[list[Any]]:
    expanded: list[list[Any]] = []
    for row in rows:
        fields = [field for field in row if not isinstance(field, dict)]
        if not fields:
            continue  # a search expression (see dashboard_searches)
        if fields[0] == "...":
            # "..." repeats the previous row's leading fields; the given ones replace its tail.
            fields = expanded[-1][: len(expanded[-1]) - len(fields) + 1] + fields[1:]
        fields = [expanded[-1][i] if field == "." else field for i, field in enumerate(fields)]
        expanded.append(fields)
    return expanded


_SEARCH = re.compile(r"SEARCH\('\{(?P<schema>[^}]*)\} (?P<terms>.*)', '(?P<stat>\w+)', (?P<period>\d+)\)")


def dashboard_searches(template: Mapping[str, Any], resolver: Resolver) -> list[tuple[str, str, set[str]]]:
    """Each SEARCH expression's schema, fleet and metric names."""
    searches = []
    for widget in dashboard_widgets(template, resolver, "metric"):
        for field in (field for row in widget["metrics"] for field in row if isinstance(field, dict)):
            if "expression" in field:
                match = _SEARCH.fullmatch(field["expression"])
                assert match, field["expression"]
                (fleet,) = re.findall(r'\bfleet="([^"]*)"', match["terms"])
                (names,) = re.findall(r"MetricName=\(([^)]*)\)", match["terms"])
                searches.append((match["schema"], fleet, set(re.findall(r'"(\w+)"', names))))
    return searches


def test_the_dashboard_is_optional_and_on_by_default(template: dict[str, Any]) -> None:
    assert template["Parameters"]["DashboardEnabled"]["Default"] == "true"
    assert template["Resources"]["Dashboard"]["Condition"] == "HasDashboard"
    assert template["Outputs"]["DashboardUrl"]["Condition"] == "HasDashboard"
    for enabled in ("true", "false"):
        resolver = Resolver(template, parameter_values(template, DashboardEnabled=enabled))
        assert resolver.condition("HasDashboard") is (enabled == "true")
    # Nothing else depends on it: the alarms stand alone.
    assert "HasDashboard" not in json.dumps({k: v for k, v in template["Resources"].items() if k != "Dashboard"})


def test_dashboard_reads_every_queue_from_the_decision_log_and_names_none(template: dict[str, Any]) -> None:
    default = Resolver(template, parameter_values(template))
    three = Resolver(template, parameter_values(template, **CUSTOM))
    # The queue list does not change the dashboard: a new queue needs no edit to show up.
    assert dashboard_body(template, default) == dashboard_body(template, three)
    body = json.dumps(dashboard_body(template, three))
    for queue in [*THREE_QUEUES, *json.loads(default.parameters["Queues"])]:
        assert queue["name"] not in body
    queries = dashboard_queries(template, three)
    scaler_group = f"SOURCE '{three.physical_id('ScalerLogGroup')}'"
    per_queue = [q for q in queries.values() if q.startswith(scaler_group) and "by queue" in q]
    # Demand, agents, live, booting or stuck, launches, the pool, and the table of the last poll.
    assert len(per_queue) == 7
    assert all('filter message = "scaling decision"' in q for q in per_queue)
    reaped = [q for title, q in queries.items() if title.startswith("Reaper")]
    assert reaped == [
        f"SOURCE '{three.physical_id('ReaperLogGroup')}' | filter message = \"terminated instance\" "
        "| stats count(*) by reason, bin(1h)"
    ]


def test_dashboard_shows_every_alarm(template: dict[str, Any], resolver: Resolver) -> None:
    (widget,) = dashboard_widgets(template, resolver, "alarm")
    alarms = of_type(template, "AWS::CloudWatch::Alarm")
    assert sorted(widget["alarms"]) == sorted(resolver.attribute(name, "Arn") for name in alarms)


def test_dashboard_graphs_only_metrics_something_emits(template: dict[str, Any], resolver: Resolver) -> None:
    source = emitted_metric_names()
    shown = {row[1] for rows in dashboard_metrics(template, resolver).values() for row in rows}
    assert {"MetricsApiErrors", "LaunchShortfall", "SpotShortfall"} <= shown
    for metric in shown - {"Errors", "Throttles"}:  # the last two are AWS/Lambda's
        assert f'"{metric}"' in source, metric
    # The instances' own spot counts, per queue, found by search in their namespace.
    ((schema, fleet, names),) = dashboard_searches(template, resolver)
    assert (schema, fleet) == ("BuildkiteAutoscaler/Spot,fleet,queue", FLEET)
    watcher = (ROOT / "userdata" / "spot-interruption-watch.sh").read_text(encoding="utf-8")
    assert "METRICS_NAMESPACE=BuildkiteAutoscaler/Spot" in watcher
    assert names == {"InterruptionNotices", "RebalanceRecommendations"}
    assert all(f"count {name}" in watcher for name in names)


def test_agent_may_count_interruptions_only_in_the_spot_namespace(template: dict[str, Any], resolver: Resolver) -> None:
    (metrics,) = [s for s in statements(template, resolver, "AgentRole") if allows(s, "cloudwatch:PutMetricData")]
    assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": "BuildkiteAutoscaler/Spot"}}


def test_scaler_may_create_only_the_spot_service_linked_role(template: dict[str, Any], resolver: Resolver) -> None:
    (create,) = [s for s in statements(template, resolver, "ScalerRole") if allows(s, "iam:CreateServiceLinkedRole")]
    assert listed(create["Resource"]) == [
        f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/spot.amazonaws.com/AWSServiceRoleForEC2Spot"
    ]
    assert create["Condition"] == {"StringEquals": {"iam:AWSServiceName": "spot.amazonaws.com"}}


# ----------------------------------------------------------------- checkov suppressions


def test_every_checkov_suppression_says_why(template: dict[str, Any]) -> None:
    skips = [
        skip
        for spec in template["Resources"].values()
        for skip in spec.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]
    assert skips
    assert all(re.fullmatch(r"CKV_AWS_\d+", skip["id"]) and len(skip["comment"]) > 40 for skip in skips)


def test_deploy_guide_lists_every_parameter_with_its_default(template: dict[str, Any]) -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| (.*?) \|", guide, flags=re.MULTILINE))
    for name, spec in template["Parameters"].items():
        assert name in rows, name
        if spec.get("Default", "") != "":
            assert rows[name] == f"`{spec['Default']}`", name


# ----------------------------------------------------------------- baked image


@pytest.mark.parametrize(("prefix", "arch", "family"), [("X86", "x86_64", "c7i"), ("Arm", "arm64", "c7g")])
def test_a_pipeline_per_architecture_bakes_canonicals_ubuntu_with_the_projects_component(
    template: dict[str, Any], resolver: Resolver, prefix: str, arch: str, family: str
) -> None:
    resources = template["Resources"]
    pipeline = resources[f"{prefix}ImagePipeline"]["Properties"]
    assert pipeline["ImageRecipeArn"] == {"Fn::GetAtt": [f"{prefix}ImageRecipe", "Arn"]}
    assert pipeline["InfrastructureConfigurationArn"] == {"Fn::GetAtt": [f"{prefix}ImageInfrastructure", "Arn"]}
    assert pipeline["DistributionConfigurationArn"] == {"Fn::GetAtt": [f"{prefix}ImageDistribution", "Arn"]}
    recipe = resolver.resolve(resources[f"{prefix}ImageRecipe"]["Properties"])
    # Resolved at each build, so a weekly bake starts from Canonical's current image.
    assert recipe["ParentImage"] == "ssm:" + template["Parameters"][f"{prefix}ImageId"]["Default"]
    assert [c["ComponentArn"] for c in recipe["Components"]] == [
        f"arn:aws:imagebuilder:{REGION}:aws:component/aws-cli-version-2-linux/x.x.x",
        resolver.attribute("AgentImageComponent", "Arn"),
    ]
    (volume,) = recipe["BlockDeviceMappings"]
    assert volume["Ebs"]["Encrypted"] is True
    infrastructure = resolver.resolve(resources[f"{prefix}ImageInfrastructure"]["Properties"])
    assert infrastructure["InstanceTypes"][0].startswith(family)
    assert infrastructure["InstanceMetadataOptions"]["HttpTokens"] == "required"
    assert infrastructure["TerminateInstanceOnFailure"] is True
    assert infrastructure["InstanceProfileName"] == resolver.ref("ImageBuildInstanceProfile")
    # The reaper terminates fleet-tagged instances that never complete a bootstrap: a
    # build instance (20-40 minutes) must not carry the fleet tag.
    assert FLEET_TAG not in infrastructure["ResourceTags"]


def test_component_and_recipes_share_one_version_for_the_lifecycle_policy(template: dict[str, Any]) -> None:
    # Both are immutable: a change needs a new version, bumped in one place.
    version = {"Fn::FindInMap": ["Image", "Recipe", "Version"]}
    resources = template["Resources"]
    for name in ("AgentImageComponent", "X86ImageRecipe", "ArmImageRecipe"):
        assert resources[name]["Properties"]["Version"] == version, name
    selected = resources["ImageLifecyclePolicy"]["Properties"]["ResourceSelection"]["Recipes"]
    assert [recipe["SemanticVersion"] for recipe in selected] == [version, version]
    assert [recipe["Name"] for recipe in selected] == [
        resources[name]["Properties"]["Name"] for name in ("X86ImageRecipe", "ArmImageRecipe")
    ]


def test_images_are_baked_weekly_by_default_and_on_demand(template: dict[str, Any], resolver: Resolver) -> None:
    default = template["Parameters"]["ImageBuildSchedule"]["Default"]
    _minutes, _hours, day_of_month, month, day_of_week, year = default[len("cron(") : -1].split()
    assert (day_of_month, month, year) == ("?", "*", "*")
    assert day_of_week.lower() in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    for prefix in ("X86", "Arm"):
        pipeline = resolver.resolve(template["Resources"][f"{prefix}ImagePipeline"]["Properties"])
        assert pipeline["Schedule"] == {
            "ScheduleExpression": default,
            "PipelineExecutionStartCondition": "EXPRESSION_MATCH_ONLY",
        }
        assert pipeline["Status"] == "ENABLED"
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "aws imagebuilder start-image-pipeline-execution" in makefile
    assert {"X86ImagePipelineArn", "ArmImagePipelineArn"} <= set(template["Outputs"])
    assert all(name in makefile for name in ("X86ImagePipelineArn", "ArmImagePipelineArn"))


def test_old_images_are_deleted_but_the_newest_and_recently_launched_are_kept(
    template: dict[str, Any], resolver: Resolver
) -> None:
    policy = resolver.resolve(template["Resources"]["ImageLifecyclePolicy"]["Properties"])
    assert (policy["ResourceType"], policy["Status"]) == ("AMI_IMAGE", "ENABLED")
    (detail,) = policy["PolicyDetails"]
    assert detail["Action"] == {"Type": "DELETE", "IncludeResources": {"Amis": True, "Snapshots": True}}
    assert detail["Filter"] == {"Type": "COUNT", "Value": "3"}
    # An instance lives at most its max uptime (hours): an image launched within a week stays.
    launched = detail["ExclusionRules"]["Amis"]["LastLaunched"]
    assert (launched["Unit"], launched["Value"]) == ("DAYS", 7)
    queues = json.loads(resolver.parameters["Queues"])
    assert all(queue.get("max_uptime_seconds", 21600) < 7 * 86400 for queue in queues)
    role = template["Resources"]["ImageLifecycleRole"]["Properties"]
    # What it may retire is judged in test_iam_behaviour.py (only this fleet's images).
    assert resolver.resolve(role["ManagedPolicyArns"]) == [
        "arn:aws:iam::aws:policy/service-role/EC2ImageBuilderLifecycleExecutionPolicy"
    ]


def test_the_bake_settings_are_the_install_time_template_values(template: dict[str, Any]) -> None:
    overrides = {**CUSTOM, "BuildkiteAgentVersion": "3.87.0", "ImageWarmNixPaths": "nixpkgs#hello nixpkgs#jq"}
    resolver = Resolver(template, parameter_values(template, **overrides))
    text = resolver.resolve(template["Resources"]["ImageBuildSettings"]["Properties"]["Value"])
    assert bake_values(text, "arm64") == {
        "BK_ARCH": "arm64",
        "BK_FLEET": FLEET,
        "BK_REGION": REGION,
        "BK_CACHE_BUCKET": "test-nix-cache",
        "BK_CACHE_REGION": "us-west-2",
        "BK_CACHE_PUBLIC_KEY": REQUIRED_PARAMETERS["NixCachePublicKey"],
        "BK_ROOT_MODE": "ebs",
        "BK_NIX_DETERMINATE": "true",
        "BK_AGENT_VERSION": "3.87.0",
        "BK_NIX_INSTALLER_VERSION": "v3.21.2",
        "BK_NIX_TRUST_JOBS": "false",
        "BK_WARM_NIX_PATHS": "nixpkgs#hello nixpkgs#jq",
    }
    # Install-time values only: no name of a secret parameter reaches the bake.
    assert "parameter" not in text.lower()


def test_the_lambdas_get_the_image_parameters_and_the_baked_timeout(
    template: dict[str, Any], resolver: Resolver
) -> None:
    scaler = ScalerSettings.from_env(lambda_environment(template, resolver, "ScalerFunction"))
    assert dict(scaler.image_parameters) == {a: f"/buildkite-autoscaler/{FLEET}/image/{a}" for a in ARCHES}
    reaper = ReaperSettings.from_env(lambda_environment(template, resolver, "ReaperFunction"))
    assert scaler.baked_bootstrap_timeout_seconds == reaper.baked_bootstrap_timeout_seconds == 300
    assert scaler.ready_grace_seconds == 30
