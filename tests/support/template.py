"""template.yaml as AWS would see it: parameter values, a resolver of the intrinsic functions the
template uses, and the pieces tests read from it (policy statements, environments, the dashboard)."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from typing import Any

with warnings.catch_warnings():
    # parliament imports pkg_resources, which warns that it is deprecated.
    warnings.simplefilter("ignore")
    import parliament

REGION = "eu-west-1"
ACCOUNT = "123456789012"
STACK = "bk-test"
FLEET = "test-fleet"


# Values for the parameters without a default, and for the SSM-typed AMI parameters
# (which CloudFormation resolves to the AMI id at deploy time).
REQUIRED_PARAMETERS: dict[str, Any] = {
    "FleetName": FLEET,
    "NixCacheBucket": "test-nix-cache",
    "NixCachePublicKey": "test-cache-1:AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    "SubnetIds": ["subnet-0aaa1111", "subnet-0bbb2222"],
    "VpcId": "vpc-0123abcd",
}


# The team's two queues, as the template deployed them before the queues were one parameter.
TEAM_DEFAULTS = {
    "nixos-x86-aws": ("x86_64", ("c7i.2xlarge", "c6i.2xlarge", "c6a.2xlarge"), 0, 10, 5, 600, 21600, False),
    "nixos-arm-aws": ("arm64", ("c7g.2xlarge", "c6g.2xlarge", "m7g.2xlarge"), 0, 4, 5, 600, 21600, False),
}


# ----------------------------------------------------------------- resolver

_PSEUDO = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws", "AWS::StackName": STACK}
_NO_VALUE = object()
_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


def parameter_values(template: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """Every parameter: its default (list types split), then REQUIRED_PARAMETERS, then overrides."""
    values: dict[str, Any] = {}
    for name, spec in template["Parameters"].items():
        if "Default" in spec:
            is_list = spec["Type"].startswith("List<") or spec["Type"] == "CommaDelimitedList"
            values[name] = spec["Default"].split(",") if is_list else str(spec["Default"])
    return {**values, **REQUIRED_PARAMETERS, **overrides}


class Resolver:
    """Evaluates Ref, Sub, GetAtt, Join, If and conditions for one set of parameter values."""

    def __init__(self, template: Mapping[str, Any], parameters: Mapping[str, Any]) -> None:
        self.template = template
        self.parameters = dict(parameters)

    def physical_id(self, logical_id: str) -> str:
        kind = self.template["Resources"][logical_id]["Type"]
        prefixes = {"AWS::EC2::LaunchTemplate": "lt-0", "AWS::EC2::SecurityGroup": "sg-0"}
        if kind == "AWS::Logs::LogGroup":
            return self.resolve(self.template["Resources"][logical_id]["Properties"]["LogGroupName"])
        if kind in ("AWS::SSM::Parameter", "Custom::ImageParameter"):
            return self.resolve(self.template["Resources"][logical_id]["Properties"]["Name"])
        if kind == "AWS::SNS::Topic":
            return f"arn:aws:sns:{REGION}:{ACCOUNT}:{STACK}-{logical_id}"
        return prefixes.get(kind, f"{STACK}-") + logical_id.lower()

    def attribute(self, logical_id: str, name: str) -> str:
        kind = self.template["Resources"][logical_id]["Type"]
        arns = {
            "AWS::IAM::Role": f"arn:aws:iam::{ACCOUNT}:role/{STACK}-{logical_id}",
            "AWS::IAM::InstanceProfile": f"arn:aws:iam::{ACCOUNT}:instance-profile/{STACK}-{logical_id}",
            "AWS::Logs::LogGroup": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{self.physical_id(logical_id)}:*",
            "AWS::Lambda::Function": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{STACK}-{logical_id}",
            "AWS::Serverless::Function": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{STACK}-{logical_id}",
            "AWS::CloudWatch::Alarm": f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{STACK}-{logical_id}",
        }
        if kind == "AWS::SQS::Queue":
            queue = f"{STACK}-{logical_id}"
            return queue if name == "QueueName" else f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}"
        if kind == "AWS::Events::Rule":
            return f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{STACK}-{logical_id}"
        if kind.startswith("AWS::ImageBuilder::"):
            kebab = re.sub(r"(?<!^)(?=[A-Z])", "-", kind.rsplit("::", 1)[1]).lower()
            return f"arn:aws:imagebuilder:{REGION}:{ACCOUNT}:{kebab}/{STACK}-{logical_id.lower()}"
        if name != "Arn" or kind not in arns:
            raise NotImplementedError(f"GetAtt {logical_id}.{name}")
        return arns[kind]

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in _PSEUDO:
            return _PSEUDO[name]
        if name in self.template["Parameters"]:
            return self.parameters[name]
        return self.physical_id(name)

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template["Conditions"][name]))

    def sub(self, value: str | list[Any]) -> str:
        text, variables = (value, {}) if isinstance(value, str) else value
        bound = {name: self.resolve(item) for name, item in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):  # ${!Literal} is the literal ${Literal}
                return "${" + name[1:] + "}"
            if name in bound:
                return str(bound[name])
            if "." in name:
                return self.attribute(*name.split(".", 1))
            return str(self.ref(name))

        return _SUB_VARIABLE.sub(replace, text)

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [item for item in map(self.resolve, node) if item is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1 and next(iter(node)) in _FUNCTIONS:
            ((name, argument),) = node.items()
            return _FUNCTIONS[name](self, argument)
        resolved = {key: self.resolve(value) for key, value in node.items()}
        return {key: value for key, value in resolved.items() if value is not _NO_VALUE}


_FUNCTIONS = {
    "Ref": lambda r, a: r.ref(a),
    "Fn::Sub": lambda r, a: r.sub(a),
    "Fn::GetAtt": lambda r, a: r.attribute(*a),
    "Fn::Join": lambda r, a: a[0].join(str(item) for item in r.resolve(a[1])),
    "Fn::If": lambda r, a: r.resolve(a[1] if r.condition(a[0]) else a[2]),
    "Fn::Select": lambda r, a: r.resolve(a[1])[int(a[0])],
    "Fn::FindInMap": lambda r, a: r.template["Mappings"][r.resolve(a[0])][r.resolve(a[1])][r.resolve(a[2])],
    "Fn::Equals": lambda r, a: r.resolve(a[0]) == r.resolve(a[1]),
    "Fn::Not": lambda r, a: not r.resolve(a[0]),
    "Condition": lambda r, a: r.condition(a),
}


# ----------------------------------------------------------------- what tests read from it


def of_type(template: Mapping[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in template["Resources"].items() if spec["Type"] == kind}


def function_environment(template: Mapping[str, Any], resolver: Resolver, logical_id: str) -> dict[str, str]:
    """The function's environment as Lambda gets it: its own variables over the Globals'."""
    shared = template["Globals"]["Function"]["Environment"]["Variables"]
    own = template["Resources"][logical_id]["Properties"].get("Environment", {}).get("Variables", {})
    return {name: str(value) for name, value in resolver.resolve({**shared, **own}).items()}


def lambda_environment(template: Mapping[str, Any], resolver: Resolver, logical_id: str) -> dict[str, str]:
    # Lambda itself sets AWS_REGION.
    return {**function_environment(template, resolver, logical_id), "AWS_REGION": REGION}


def statements(template: Mapping[str, Any], resolver: Resolver, role: str) -> list[dict[str, Any]]:
    policies = template["Resources"][role]["Properties"]["Policies"]
    return [s for policy in policies for s in resolver.resolve(policy["PolicyDocument"])["Statement"]]


def resolve_role(reference: dict[str, Any]) -> str:
    return reference["Fn::GetAtt"][0]


def parliament_findings(document: Mapping[str, Any]) -> list[Any]:
    return parliament.analyze_policy_string(json.dumps(document)).findings


def findings_by_statement(role: str, document: Mapping[str, Any]) -> set[tuple[str, str, str]]:
    found = set()
    for statement in document["Statement"]:
        alone = {**document, "Statement": [statement]}
        found |= {(role, statement.get("Sid", ""), finding.issue) for finding in parliament_findings(alone)}
    return found


def queue_check_properties(template: Mapping[str, Any], resolver: Resolver) -> dict[str, str]:
    properties = resolver.resolve(template["Resources"]["QueueCheck"]["Properties"])
    return {name: value for name, value in properties.items() if name not in ("ServiceToken", "ServiceTimeout")}


def dashboard_body(template: Mapping[str, Any], resolver: Resolver) -> dict[str, Any]:
    return json.loads(resolver.resolve(template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]))


def dashboard_widgets(template: Mapping[str, Any], resolver: Resolver, kind: str) -> list[dict[str, Any]]:
    return [w["properties"] for w in dashboard_body(template, resolver)["widgets"] if w["type"] == kind]


def dashboard_queries(template: Mapping[str, Any], resolver: Resolver) -> dict[str, str]:
    """Each Logs Insights widget's title and query."""
    return {widget["title"]: widget["query"] for widget in dashboard_widgets(template, resolver, "log")}
