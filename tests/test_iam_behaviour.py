"""The template's IAM policies, judged on behaviour by an independent evaluator.

Each role's policy (placeholders filled in as AWS would) is evaluated by
@cloud-copilot/iam-simulate (pinned in tools/iam-simulate, installed by
`make iam-simulate`) against concrete requests with the context keys AWS
puts in them: the requests the product makes must be allowed, the ones it
must never make denied. parliament and cfn-lint judge the policies' form
(tests/test_template.py); this judges what they let happen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from tests.support import iam
from tests.support.iam import (
    ALLOWED,
    BOOTING,
    DENIED,
    EC2,
    EXPLICITLY_DENIED,
    PEER,
    SELF,
    Request,
    check,
    evaluate,
    instance,
    policy_of,
    principal_of,
    request_tags,
    secret,
    self_tag,
    terminate,
)
from tests.support.template import ACCOUNT, FLEET, REGION, Resolver, parameter_values, resolve_role
from tools.invoke import load_template

from autoscaler.lifecycle import (
    AGENT_VERSION_TAG,
    BOOTSTRAP_TAG,
    FLEET_TAG,
    IMAGE_TAG,
    NIX_VERSION_TAG,
    QUEUE_TAG,
    READY_AT_TAG,
    ROLE_TAG,
)

resolver = iam.resolver
LAUNCH_TAGS = {"Name": "buildkite-nixos-x86-aws", FLEET_TAG: FLEET, QUEUE_TAG: "nixos-x86-aws", ROLE_TAG: "burst"}


# ----------------------------------------------------------------- agent


# What the bootstrap tags in its one call at the end (mark_complete in userdata/steps/completion.sh).
COMPLETE_TAGS = {
    BOOTSTRAP_TAG: "complete",
    READY_AT_TAG: "2026-01-01T00:00:00Z",
    AGENT_VERSION_TAG: "3.87.0",
    NIX_VERSION_TAG: "2.31.2",
}
AGENT_CASES: dict[str, tuple[Request, str]] = {
    "tag itself complete": (self_tag(SELF, COMPLETE_TAGS), ALLOWED),
    "tag itself failed": (self_tag(SELF, {BOOTSTRAP_TAG: "failed"}), ALLOWED),
    "tag another instance of its fleet": (self_tag(PEER, {BOOTSTRAP_TAG: "complete"}), DENIED),
    "retag itself into another fleet": (self_tag(SELF, {FLEET_TAG: "other-fleet"}), DENIED),
    "retag its queue": (self_tag(SELF, {QUEUE_TAG: "nixos-arm-aws"}), DENIED),
    "a third tag key alongside the two": (self_tag(SELF, {BOOTSTRAP_TAG: "complete", ROLE_TAG: "floor"}), DENIED),
    "a fifth tag key alongside the four": (self_tag(SELF, {**COMPLETE_TAGS, ROLE_TAG: "floor"}), DENIED),
    "retag the image it was launched from": (self_tag(SELF, {**COMPLETE_TAGS, IMAGE_TAG: "1.0.0/9"}), DENIED),
    "tag itself when not of this fleet": (self_tag(SELF, {BOOTSTRAP_TAG: "complete"}, {FLEET_TAG: "other"}), DENIED),
    "its credentials used off the instance": (self_tag(SELF, {BOOTSTRAP_TAG: "complete"}, caller=""), DENIED),
    "terminate itself": (terminate(BOOTING), DENIED),
    "read the agent token": (Request("ssm:GetParameter", secret("/buildkite/agent-token")), ALLOWED),
    "read the deploy key": (Request("ssm:GetParameter", secret("/buildkite/ssh-deploy-key")), ALLOWED),
    "read the signing key": (Request("ssm:GetParameters", secret("/buildkite/nix-cache-signing-key")), ALLOWED),
    "read another parameter": (Request("ssm:GetParameter", secret("/prod/database-password")), DENIED),
    "read the cache": (Request("s3:GetObject", "arn:aws:s3:::test-nix-cache/nix-cache-info"), ALLOWED),
    "write the cache": (Request("s3:PutObject", "arn:aws:s3:::test-nix-cache/abc.narinfo"), ALLOWED),
    "write another bucket": (Request("s3:PutObject", "arn:aws:s3:::other-bucket/abc.narinfo"), DENIED),
    "delete from the cache": (Request("s3:DeleteObject", "arn:aws:s3:::test-nix-cache/abc.narinfo"), DENIED),
}


def test_agent_role_allows_what_the_instance_does_and_nothing_it_must_not(resolver: Resolver) -> None:
    check(resolver, "AgentRole", SELF, AGENT_CASES)


# ----------------------------------------------------------------- reaper

REAPER_CASES: dict[str, tuple[Request, str]] = {
    "terminate a failed instance": (terminate({**BOOTING, BOOTSTRAP_TAG: "failed"}), ALLOWED),
    "terminate a stuck instance": (terminate(BOOTING), ALLOWED),
    "terminate a ready instance": (terminate({**BOOTING, BOOTSTRAP_TAG: "complete"}), EXPLICITLY_DENIED),
    "terminate another fleet's instance": (terminate({**BOOTING, FLEET_TAG: "other-fleet"}), DENIED),
    "terminate an untagged instance": (terminate({}), DENIED),
    "read a fleet instance's console": (terminate(BOOTING, "ec2:GetConsoleOutput"), ALLOWED),
    "read another fleet's console": (terminate({FLEET_TAG: "other"}, "ec2:GetConsoleOutput"), DENIED),
    "list instances": (Request("ec2:DescribeInstances", "*"), ALLOWED),
    "launch": (Request("ec2:RunInstances", instance("*"), request_tags(LAUNCH_TAGS)), DENIED),
    "retag an instance": (Request("ec2:CreateTags", instance(PEER), request_tags({BOOTSTRAP_TAG: "x"})), DENIED),
    "read the agent token": (Request("ssm:GetParameter", secret("/buildkite/agent-token")), DENIED),
}


def test_reaper_role_terminates_only_unready_instances_of_its_fleet(resolver: Resolver) -> None:
    check(resolver, "ReaperRole", "reaper", REAPER_CASES)


# ----------------------------------------------------------------- scaler


def launch_template(resolver: Resolver, logical_id: str = "X86LaunchTemplate") -> str:
    return f"{EC2}:launch-template/{resolver.ref(logical_id)}"


def instance_settings(resolver: Resolver, **overrides: Any) -> dict[str, Any]:
    """What EC2 puts in a RunInstances request's instance resource from the launch template
    (and any override): its instance profile and metadata options."""
    return {
        "ec2:InstanceProfile": resolver.attribute("AgentInstanceProfile", "Arn"),
        "ec2:MetadataHttpTokens": "required",
        "ec2:MetadataHttpPutResponseHopLimit": "1",
        **overrides,
    }


def run_instances(
    resolver: Resolver, tags: Mapping[str, str], template_arn: str = "", **instance_overrides: Any
) -> dict[str, Request]:
    """One RunInstances call as IAM sees it: one request per resource it uses or creates.
    A spot launch adds its spot instance request, which carries only the request's tags."""
    via = {"ec2:LaunchTemplate": template_arn or launch_template(resolver)}
    tagged = {**via, **request_tags(tags)}
    volume_tags = {key: value for key, value in tags.items() if key != BOOTSTRAP_TAG}
    group = resolver.ref("AgentSecurityGroup")
    return {
        "launch-template": Request("ec2:RunInstances", via["ec2:LaunchTemplate"], via),
        "image": Request("ec2:RunInstances", image(), {**via, **BAKED_IMAGE}),
        "stock image": Request("ec2:RunInstances", image(), {**via, "ec2:Owner": CANONICAL}),
        "stock image by its owner alias": Request("ec2:RunInstances", image(), {**via, "ec2:Owner": "amazon"}),
        "subnet": Request("ec2:RunInstances", f"{EC2}:subnet/subnet-0aaa1111", via),
        "network-interface": Request("ec2:RunInstances", f"{EC2}:network-interface/*", via),
        "security-group": Request("ec2:RunInstances", f"{EC2}:security-group/{group}", via),
        "instance": Request(
            "ec2:RunInstances", instance("*"), {**tagged, **instance_settings(resolver, **instance_overrides)}
        ),
        "volume": Request(
            "ec2:RunInstances", f"{EC2}:volume/*", {**via, **request_tags(volume_tags), "ec2:Encrypted": "true"}
        ),
        "spot request": Request("ec2:RunInstances", f"{EC2}:spot-instances-request/*", request_tags(volume_tags)),
    }


# What IAM knows of an image: its owner and its tags. A baked image is this account's, with
# the fleet's tag; the stock one is Canonical's.
CANONICAL = "099720109477"
BAKED_IMAGE = {"ec2:Owner": ACCOUNT, f"aws:ResourceTag/{FLEET_TAG}": FLEET}


def image(image_id: str = "ami-0aaaaaaaaaaaaaaa1") -> str:
    return f"arn:aws:ec2:{REGION}::image/{image_id}"


def tag_at_launch(resource: str, tags: Mapping[str, str], create_action: str = "RunInstances") -> Request:
    context = {**request_tags(tags), **({"ec2:CreateAction": create_action} if create_action else {})}
    return Request("ec2:CreateTags", resource, context)


# What the scaler tags an instance with at launch (fleet.py): a burst or floor instance
# boots pending, a warm pool instance warming.
PENDING_LAUNCH = {**LAUNCH_TAGS, BOOTSTRAP_TAG: "pending"}
POOL_LAUNCH = {**LAUNCH_TAGS, ROLE_TAG: "pool", BOOTSTRAP_TAG: "warming"}


def scaler_cases(resolver: Resolver) -> dict[str, tuple[Request, str]]:
    token = secret("/buildkite/agent-token")
    cases: dict[str, tuple[Request, str]] = {
        f"launch: {kind}": (request, ALLOWED) for kind, request in run_instances(resolver, PENDING_LAUNCH).items()
    }
    cases |= {
        f"launch into the pool: {kind}": (request, ALLOWED)
        for kind, request in run_instances(resolver, POOL_LAUNCH).items()
    }
    done = {**LAUNCH_TAGS, BOOTSTRAP_TAG: "complete"}
    cases |= {
        "launch an instance already complete": (run_instances(resolver, done)["instance"], DENIED),
        "launch an instance already failed": (
            run_instances(resolver, {**LAUNCH_TAGS, BOOTSTRAP_TAG: "failed"})["instance"],
            DENIED,
        ),
        "launch an instance with no bootstrap tag": (run_instances(resolver, LAUNCH_TAGS)["instance"], DENIED),
        "tag an instance complete at launch": (tag_at_launch(instance("*"), done), DENIED),
        "launch with another instance profile": (
            run_instances(
                resolver, PENDING_LAUNCH, **{"ec2:InstanceProfile": f"arn:aws:iam::{ACCOUNT}:instance-profile/admin"}
            )["instance"],
            DENIED,
        ),
        "launch with IMDSv1": (
            run_instances(resolver, PENDING_LAUNCH, **{"ec2:MetadataHttpTokens": "optional"})["instance"],
            DENIED,
        ),
        "launch with the metadata reachable from containers": (
            run_instances(resolver, PENDING_LAUNCH, **{"ec2:MetadataHttpPutResponseHopLimit": "2"})["instance"],
            DENIED,
        ),
        "launch an unencrypted volume": (
            Request(
                "ec2:RunInstances",
                f"{EC2}:volume/*",
                {
                    "ec2:LaunchTemplate": launch_template(resolver),
                    **request_tags(LAUNCH_TAGS),
                    "ec2:Encrypted": "false",
                },
            ),
            DENIED,
        ),
        "a spot request without the fleet tag": (
            Request("ec2:RunInstances", f"{EC2}:spot-instances-request/*", request_tags({QUEUE_TAG: "q"})),
            DENIED,
        ),
        "tag the spot request at launch": (tag_at_launch(f"{EC2}:spot-instances-request/*", LAUNCH_TAGS), ALLOWED),
    }
    cases |= {
        f"launch from the arm template: {kind}": (request, ALLOWED)
        for kind, request in run_instances(
            resolver, PENDING_LAUNCH, launch_template(resolver, "ArmLaunchTemplate")
        ).items()
        if kind != "spot request"
    }
    untagged = {key: value for key, value in PENDING_LAUNCH.items() if key != FLEET_TAG}
    foreign = f"{EC2}:launch-template/lt-0foreign000000000"
    cases |= {
        "launch without the fleet tag: instance": (run_instances(resolver, untagged)["instance"], DENIED),
        "launch without the fleet tag: volume": (run_instances(resolver, untagged)["volume"], DENIED),
        "launch into another fleet": (run_instances(resolver, {**PENDING_LAUNCH, FLEET_TAG: "x"})["instance"], DENIED),
        "launch from a foreign template: template": (
            run_instances(resolver, PENDING_LAUNCH, foreign)["launch-template"],
            DENIED,
        ),
        "launch from a foreign template: instance": (
            run_instances(resolver, PENDING_LAUNCH, foreign)["instance"],
            DENIED,
        ),
        "launch from a foreign template: image": (run_instances(resolver, PENDING_LAUNCH, foreign)["image"], DENIED),
        "launch another account's image": (
            Request("ec2:RunInstances", image(), {"ec2:LaunchTemplate": launch_template(resolver), "ec2:Owner": "1"}),
            DENIED,
        ),
        "launch another fleet's baked image": (
            Request(
                "ec2:RunInstances",
                image(),
                {**BAKED_IMAGE, "ec2:LaunchTemplate": launch_template(resolver), f"aws:ResourceTag/{FLEET_TAG}": "x"},
            ),
            DENIED,
        ),
        "tag the instance at launch": (
            tag_at_launch(instance("*"), {**LAUNCH_TAGS, BOOTSTRAP_TAG: "pending"}),
            ALLOWED,
        ),
        "tag the volume at launch": (tag_at_launch(f"{EC2}:volume/*", LAUNCH_TAGS), ALLOWED),
        "tag a running instance": (tag_at_launch(instance(PEER), {BOOTSTRAP_TAG: "complete"}, ""), DENIED),
        "tag at launch into another fleet": (tag_at_launch(instance("*"), {FLEET_TAG: "other"}), DENIED),
        "terminate": (terminate(BOOTING), DENIED),
        "list instances": (Request("ec2:DescribeInstances", "*"), ALLOWED),
        "pass the agent role to EC2": (
            Request(
                "iam:PassRole",
                resolver.attribute("AgentRole", "Arn"),
                {"iam:PassedToService": "ec2.amazonaws.com"},
            ),
            ALLOWED,
        ),
        "pass the agent role to Lambda": (
            Request(
                "iam:PassRole",
                resolver.attribute("AgentRole", "Arn"),
                {"iam:PassedToService": "lambda.amazonaws.com"},
            ),
            DENIED,
        ),
        "pass another role": (
            Request("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/admin", {"iam:PassedToService": "ec2.amazonaws.com"}),
            DENIED,
        ),
        "read the agent token": (Request("ssm:GetParameter", token), ALLOWED),
        "read the deploy key": (Request("ssm:GetParameter", secret("/buildkite/ssh-deploy-key")), DENIED),
        # EC2 resolves the launch templates' resolve:ssm: image with the caller's permissions.
        "read the x86 image parameter": (
            Request("ssm:GetParameters", secret(resolver.ref("X86ImageParameter"))),
            ALLOWED,
        ),
        "read the arm image parameter": (
            Request("ssm:GetParameters", secret(resolver.ref("ArmImageParameter"))),
            ALLOWED,
        ),
        "read the deploy key by GetParameters": (
            Request("ssm:GetParameters", secret("/buildkite/ssh-deploy-key")),
            DENIED,
        ),
        # Decrypting through SSM with the parameter's encryption context is checked by form
        # (test_template.py): the evaluator's action data does not list the
        # kms:EncryptionContext:<key> keys for kms:Decrypt and would drop them.
        "decrypt directly": (kms("kms:Decrypt", f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd"), DENIED),
    }
    return cases


def test_scaler_role_launches_only_tagged_instances_from_the_stacks_templates(resolver: Resolver) -> None:
    check(resolver, "ScalerRole", "scaler", scaler_cases(resolver))


# ----------------------------------------------------------------- image build instance

# The parameter reads of the AWS managed policy AmazonSSMManagedInstanceCore (v2, as the AWS
# Managed Policy Reference prints it), which the build role carries so Image Builder can run
# the component through SSM: on every parameter of the account.
SSM_MANAGED_INSTANCE_CORE_READS = {
    "Effect": "Allow",
    "Action": ["ssm:GetParameter", "ssm:GetParameters"],
    "Resource": "*",
}


def build_instance_cases(resolver: Resolver) -> dict[str, tuple[Request, str]]:
    own = {"ec2:SourceInstanceARN": instance(SELF)}
    cases: dict[str, tuple[Request, str]] = {
        f"read the {name}": (Request(action, secret(resolver.parameters[parameter])), EXPLICITLY_DENIED)
        for name, parameter in (
            ("agent token", "AgentTokenParameter"),
            ("deploy key", "SshKeyParameter"),
            ("signing key", "NixSigningKeyParameter"),
        )
        for action in ("ssm:GetParameter", "ssm:GetParameters")
    }
    return cases | {
        "read the secrets by path": (Request("ssm:GetParametersByPath", secret("/buildkite")), EXPLICITLY_DENIED),
        "read the bake settings": (Request("ssm:GetParameter", secret(resolver.ref("ImageBuildSettings"))), ALLOWED),
        "read its own tags": (Request("ec2:DescribeTags", "*", own), ALLOWED),
        "read tags with its credentials off the instance": (Request("ec2:DescribeTags", "*"), DENIED),
        "fetch the scaler's code": (
            Request("lambda:GetFunction", resolver.attribute("ScalerFunction", "Arn")),
            ALLOWED,
        ),
        "read the cache": (Request("s3:GetObject", "arn:aws:s3:::test-nix-cache/nix-cache-info"), ALLOWED),
        "write the cache": (Request("s3:PutObject", "arn:aws:s3:::test-nix-cache/abc.narinfo"), DENIED),
    }


def test_image_build_instance_reads_no_secret_even_with_the_ssm_managed_policy(resolver: Resolver) -> None:
    policy = policy_of(resolver, "ImageBuildRole")
    policy["Statement"].append(SSM_MANAGED_INSTANCE_CORE_READS)
    cases = build_instance_cases(resolver)
    verdicts = evaluate(policy, principal_of("ImageBuildRole", SELF), [request for request, _ in cases.values()])
    assert dict(zip(cases, verdicts, strict=True)) == {name: expected for name, (_, expected) in cases.items()}


# ----------------------------------------------------------------- image pipelines


def distribution_writes(resolver: Resolver, pipeline: str) -> tuple[str, list[str]]:
    """The role a pipeline distributes as and the parameters its distribution writes, followed
    through the template as Image Builder follows them (no role would mean its service-linked
    role, which may write only /imagebuilder/ parameters)."""
    properties = resolver.template["Resources"][pipeline]["Properties"]
    role = resolve_role(properties["ExecutionRole"])
    distribution = resolver.template["Resources"][properties["DistributionConfigurationArn"]["Fn::GetAtt"][0]]
    names = [
        resolver.resolve(parameter["ParameterName"])
        for target in distribution["Properties"]["Distributions"]
        for parameter in target["SsmParameterConfigurations"]
    ]
    return role, names


@pytest.mark.parametrize("pipeline", ["X86ImagePipeline", "ArmImagePipeline"])
def test_each_pipeline_distributes_as_a_role_that_may_write_its_image_parameter(
    resolver: Resolver, pipeline: str
) -> None:
    role, names = distribution_writes(resolver, pipeline)
    assert names == [resolver.ref(pipeline.replace("Pipeline", "Parameter"))]
    other_fleet = secret(names[0].replace(f"/{FLEET}/", "/other-fleet/"))
    cases = {
        "write the image id": (Request("ssm:PutParameter", secret(names[0])), ALLOWED),
        "check the image": (Request("ec2:DescribeImages", "*"), ALLOWED),
        "write another fleet's image parameter": (Request("ssm:PutParameter", other_fleet), DENIED),
        "overwrite the agent token": (Request("ssm:PutParameter", secret("/buildkite/agent-token")), DENIED),
        "read the agent token": (Request("ssm:GetParameter", secret("/buildkite/agent-token")), DENIED),
    }
    check(resolver, role, "imagebuilder", cases)


def test_the_queue_check_reads_the_agent_token_and_no_other_secret(resolver: Resolver) -> None:
    # It registers and deregisters the Buildkite stacks with the agent token; nothing else.
    token, ssh_key, signing_key = (
        secret(resolver.parameters[name])
        for name in ("AgentTokenParameter", "SshKeyParameter", "NixSigningKeyParameter")
    )
    cases = {
        "read the agent token": (Request("ssm:GetParameter", token), ALLOWED),
        "read the deploy key": (Request("ssm:GetParameter", ssh_key), DENIED),
        "read the signing key": (Request("ssm:GetParameter", signing_key), DENIED),
        "overwrite the agent token": (Request("ssm:PutParameter", token), DENIED),
        "decrypt directly": (kms("kms:Decrypt", f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd"), DENIED),
        "launch an instance": (Request("ec2:RunInstances", f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*"), DENIED),
    }
    check(resolver, "QueueCheckRole", "queue-check", cases)


def test_the_image_parameter_resource_writes_only_the_two_image_parameters(resolver: Resolver) -> None:
    x86, arm = (secret(resolver.ref(name)) for name in ("X86ImageParameter", "ArmImageParameter"))
    cases = {
        "create the x86_64 parameter": (Request("ssm:PutParameter", x86), ALLOWED),
        "tag the arm64 parameter": (Request("ssm:AddTagsToResource", arm), ALLOWED),
        "delete the arm64 parameter": (Request("ssm:DeleteParameter", arm), ALLOWED),
        "check the image": (Request("ec2:DescribeImages", "*"), ALLOWED),
        "overwrite the agent token": (Request("ssm:PutParameter", secret("/buildkite/agent-token")), DENIED),
        "read the agent token": (Request("ssm:GetParameter", secret("/buildkite/agent-token")), DENIED),
        "delete the bake settings": (
            Request("ssm:DeleteParameter", secret(resolver.ref("ImageBuildSettings"))),
            DENIED,
        ),
    }
    check(resolver, "ImageParameterRole", "image-parameter", cases)


EBS_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0a1b2c3d-1111-2222-3333-444455556666"
OTHER_KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/9f8e7d6c-1111-2222-3333-444455556666"
THROUGH_EC2 = {"kms:ViaService": f"ec2.{REGION}.amazonaws.com"}
# KMS requires the key policy to allow too: the default key policy, which lets the account's
# IAM policies grant the key (what docs/deploy.md asks of a customer-managed EBS key).
DEFAULT_KEY_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
            "Action": "kms:*",
            "Resource": "*",
        }
    ],
}


def kms(action: str, key: str, context: Mapping[str, Any] | None = None) -> Request:
    return Request(action, key, context or {}, DEFAULT_KEY_POLICY)


def ebs_key_cases(granted: str) -> dict[str, tuple[Request, str]]:
    """What EC2 does with the caller's permissions when it launches or starts an instance (or
    builds an image) with volumes encrypted by a customer-managed key."""
    for_ec2 = {**THROUGH_EC2, "kms:GrantIsForAWSResource": "true"}
    return {
        "grant the key to EC2's volumes": (kms("kms:CreateGrant", EBS_KEY, for_ec2), granted),
        "make a volume's data key": (kms("kms:GenerateDataKeyWithoutPlaintext", EBS_KEY, THROUGH_EC2), granted),
        "decrypt a volume's data key": (kms("kms:Decrypt", EBS_KEY, THROUGH_EC2), granted),
        "describe the key": (kms("kms:DescribeKey", EBS_KEY, THROUGH_EC2), granted),
        "grant the key to anyone": (
            kms("kms:CreateGrant", EBS_KEY, {**THROUGH_EC2, "kms:GrantIsForAWSResource": "false"}),
            DENIED,
        ),
        "decrypt with the key directly": (kms("kms:Decrypt", EBS_KEY), DENIED),
        "decrypt with the key through S3": (
            kms("kms:Decrypt", EBS_KEY, {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}),
            DENIED,
        ),
        "grant another key": (kms("kms:CreateGrant", OTHER_KEY, for_ec2), DENIED),
    }


@pytest.mark.parametrize(("role", "session"), [("ScalerRole", "scaler"), ("ImageExecutionRole", "imagebuilder")])
@pytest.mark.parametrize(("key", "granted"), [(EBS_KEY, ALLOWED), ("", DENIED)])
def test_a_customer_managed_ebs_key_is_usable_through_ec2_only_when_given(
    role: str, session: str, key: str, granted: str
) -> None:
    template = load_template()
    resolver = Resolver(template, parameter_values(template, EbsKmsKeyArn=key))
    check(resolver, role, session, ebs_key_cases(granted))
    launch_template = resolver.resolve(template["Resources"]["X86LaunchTemplate"]["Properties"])
    (volume,) = launch_template["LaunchTemplateData"]["BlockDeviceMappings"]
    assert volume["Ebs"].get("KmsKeyId") == (key or None)


# The image statement of the AWS managed policy EC2ImageBuilderLifecycleExecutionPolicy (v1, as
# the AWS Managed Policy Reference prints it): every Image Builder AMI of the account.
LIFECYCLE_MANAGED_IMAGES = {
    "Effect": "Allow",
    "Action": ["ec2:EnableImage", "ec2:DeregisterImage", "ec2:EnableImageDeprecation", "ec2:DisableImage"],
    "Resource": "arn:aws:ec2:*::image/*",
    "Condition": {"StringEquals": {"aws:ResourceTag/CreatedBy": "EC2 Image Builder"}},
}


def test_the_lifecycle_role_retires_only_this_fleets_images(resolver: Resolver) -> None:
    policy = policy_of(resolver, "ImageLifecycleRole")
    policy["Statement"].append(LIFECYCLE_MANAGED_IMAGES)
    built = {"aws:ResourceTag/CreatedBy": "EC2 Image Builder"}
    ours = {**built, f"aws:ResourceTag/{FLEET_TAG}": FLEET}
    cases = {
        "deregister this fleet's old image": (Request("ec2:DeregisterImage", image(), ours), ALLOWED),
        "deprecate this fleet's old image": (Request("ec2:EnableImageDeprecation", image(), ours), ALLOWED),
        "deregister another team's Image Builder image": (
            Request("ec2:DeregisterImage", image(), built),
            EXPLICITLY_DENIED,
        ),
        "disable another fleet's image": (
            Request("ec2:DisableImage", image(), {**built, f"aws:ResourceTag/{FLEET_TAG}": "other"}),
            EXPLICITLY_DENIED,
        ),
    }
    verdicts = evaluate(policy, principal_of("ImageLifecycleRole", "lifecycle"), [r for r, _ in cases.values()])
    assert dict(zip(cases, verdicts, strict=True)) == {name: expected for name, (_, expected) in cases.items()}


def test_the_evaluator_tells_allowed_from_denied() -> None:
    # The evaluator itself, on a policy small enough to judge by eye: were it to
    # allow everything or nothing, the tests above would mean nothing.
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::a/*"}],
    }
    requests = [Request("s3:GetObject", "arn:aws:s3:::a/k"), Request("s3:GetObject", "arn:aws:s3:::b/k")]
    assert evaluate(policy, principal_of("r", "s"), requests) == [ALLOWED, DENIED]
