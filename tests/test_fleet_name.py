"""FleetName: every name its pattern accepts is one every resource it goes into accepts.

A name the parameter accepts and a resource refuses fails the deploy late,
half-way through creating the stack. Each check below is the service's
documented limit on the property the name is substituted into.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from typing import Any

import pytest
from tests.support.template import Resolver, of_type, parameter_values
from tools.invoke import load_template

TEMPLATE = load_template()
PATTERN = re.compile(TEMPLATE["Parameters"]["FleetName"]["AllowedPattern"])

# Printable ASCII but the space, and a few non-ASCII letters.
CHARACTERS = string.ascii_letters + string.digits + string.punctuation + "éß"
IAM_DESCRIPTION = re.compile(r"[\t\n\r\x20-\x7e\xa1-\xff]{0,1000}")
# EC2 security group descriptions: a-z, A-Z, 0-9, spaces and ._-:/()#,@[]+=&;{}!$*
GROUP_DESCRIPTION = re.compile(r"[A-Za-z0-9 ._\-:/()#,@\[\]+=&;{}!$*]{0,255}")
# SSM: letters, digits and . - _ /, at most 1011 characters, and no "aws" or "ssm" prefix.
SSM_PARAMETER_NAME = re.compile(r"(?!/?(aws|ssm))[A-Za-z0-9._/-]{1,1011}", re.IGNORECASE)


def accepted_names() -> Iterator[str]:
    """The longest name the pattern takes, and each character it takes after the first."""
    longest = max((n for n in range(1, 300) if PATTERN.fullmatch("a" * n)), default=0)
    yield "a" * longest
    for character in CHARACTERS:
        if PATTERN.fullmatch("a" + character):
            yield "a" + character * (longest - 1)


def limits(resolver: Resolver) -> Iterator[tuple[str, str, bool]]:
    """(where, resolved value, whether the service accepts it) for each place the name goes."""
    resources = TEMPLATE["Resources"]
    dashboard = resolver.resolve(resources["Dashboard"]["Properties"]["DashboardName"])
    # CloudWatch: "alphanumerics, dash (-), and underscore (_)", at most 255.
    yield "DashboardName", dashboard, bool(re.fullmatch(r"[A-Za-z0-9_-]{1,255}", dashboard))
    display = resolver.resolve(resources["AlarmTopic"]["Properties"]["DisplayName"])
    yield "SNS DisplayName", display, len(display) <= 100
    for name, spec in of_type(TEMPLATE, "AWS::IAM::Role").items():
        description = resolver.resolve(spec["Properties"]["Description"])
        yield f"{name}.Description", description, bool(IAM_DESCRIPTION.fullmatch(description))
    group = resolver.resolve(resources["AgentSecurityGroup"]["Properties"]["GroupDescription"])
    yield "GroupDescription", group, bool(GROUP_DESCRIPTION.fullmatch(group))
    for name, spec in {
        **of_type(TEMPLATE, "AWS::SSM::Parameter"),
        **of_type(TEMPLATE, "Custom::ImageParameter"),
    }.items():
        parameter = resolver.resolve(spec["Properties"]["Name"])
        yield f"{name}.Name", parameter, bool(SSM_PARAMETER_NAME.fullmatch(parameter))
    for name, spec in of_type(TEMPLATE, "AWS::CloudWatch::Alarm").items():
        description = resolver.resolve(spec["Properties"]["AlarmDescription"])
        yield f"{name}.AlarmDescription", description, len(description) <= 1024
    for name, spec in of_type(TEMPLATE, "AWS::Events::Rule").items():
        description = resolver.resolve(spec["Properties"]["Description"])
        yield f"{name}.Description", description, len(description) <= 512
    for name, spec in of_type(TEMPLATE, "AWS::Serverless::Function").items():
        for event in spec["Properties"].get("Events", {}).values():
            description = resolver.resolve(event["Properties"]["Description"])
            yield f"{name} schedule Description", description, len(description) <= 512
    # Tag values (instances, volumes, launch templates, the group) and EMF dimension values.
    yield "tag value", resolver.parameters["FleetName"], len(resolver.parameters["FleetName"]) <= 256


@pytest.mark.parametrize("name", list(accepted_names()))
def test_every_accepted_fleet_name_fits_every_place_it_goes(name: str) -> None:
    resolver = Resolver(TEMPLATE, parameter_values(TEMPLATE, FleetName=name, AlarmEmail="ops@example.com"))
    refused = [(where, value) for where, value, ok in limits(resolver) if not ok]
    assert refused == []


@pytest.mark.parametrize("name", ["buildkite", "ci-prod_2", "A", "x" * 63])
def test_ordinary_fleet_names_are_accepted(name: str) -> None:
    assert PATTERN.fullmatch(name)


@pytest.mark.parametrize("name", ["", "-lead", "has.dot", "has space", "x" * 64, "fleet/1"])
def test_names_some_resource_refuses_are_rejected_at_the_parameter(name: str) -> None:
    assert not PATTERN.fullmatch(name)


def test_the_checks_see_every_resource_that_takes_the_name() -> None:
    # A new resource that takes the name must be added to `limits` too.
    resolver = Resolver(TEMPLATE, parameter_values(TEMPLATE, FleetName="zz-fleet", AlarmEmail="ops@example.com"))
    checked = " ".join(value for _, value, _ in limits(resolver))

    for logical_id, spec in TEMPLATE["Resources"].items():
        for key, value in spec.get("Properties", {}).items():
            if key in UNCHECKED:
                continue
            for text in strings(resolver.resolve(value)):
                if "zz-fleet" in text:
                    assert text in checked, (logical_id, key, text)


# Where the name appears as a whole tag or dimension value (checked as "tag value"), in the
# Lambdas' settings, in policy conditions, in the dashboard's markdown, and in the bake's
# settings (an SSM parameter's JSON value, which the bake validates as the scaler does) and
# the image component's script (which names those parameters, checked above by their Name).
UNCHECKED = (
    "Value",
    "Data",
    "Tags",
    "TagSpecifications",
    "LaunchTemplateData",
    "Environment",
    "Policies",
    "Dimensions",
    "DashboardBody",
)


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
