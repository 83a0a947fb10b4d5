"""Run one of the stack's Lambda handlers in this process, without Docker.

    python tools/invoke.py ScalerFunction events/scaler-dry-run.json --stack buildkite-autoscaler
    python tools/invoke.py ReaperFunction events/reaper-dry-run.json --env-file env.json

The handler and its timeout come from template.yaml. Its environment comes from
the deployed function (--stack) or from a `sam local invoke --env-vars` file
(--env-file); the process's own environment fills the rest. It talks to real
AWS with your credentials, so it stops early and says so when there are none.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import boto3
import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """A YAML loader that reads CloudFormation short forms (!Ref, !Sub, ...) as their long forms."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    with path.open(encoding="utf-8") as stream:
        return yaml.load(stream, Loader=_CfnLoader)  # noqa: S506 - a SafeLoader subclass


class FakeContext:
    """The parts of the Lambda context the handlers and Powertools read; the deadline is real."""

    def __init__(self, function_name: str, timeout_seconds: float, memory_mb: int) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"local/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def function_properties(template: Mapping[str, Any], logical_id: str) -> dict[str, Any]:
    """The function's properties with the template's Globals applied (handler, timeout, memory)."""
    resource = template["Resources"].get(logical_id)
    if not resource or resource.get("Type") != "AWS::Serverless::Function":
        functions = [
            key for key, value in template["Resources"].items() if value["Type"] == "AWS::Serverless::Function"
        ]
        raise SystemExit(f"error: {logical_id} is not a function of template.yaml (functions: {', '.join(functions)})")
    return {**template.get("Globals", {}).get("Function", {}), **resource["Properties"]}


def deployed_environment(session: boto3.Session, stack: str, logical_id: str) -> dict[str, str]:
    """The environment of the function as deployed by the stack."""
    resource = session.client("cloudformation").describe_stack_resource(StackName=stack, LogicalResourceId=logical_id)
    name = resource["StackResourceDetail"]["PhysicalResourceId"]
    configuration = session.client("lambda").get_function_configuration(FunctionName=name)
    return configuration.get("Environment", {}).get("Variables", {})


def file_environment(path: Path, logical_id: str) -> dict[str, str]:
    """`sam local invoke --env-vars` format: a "Parameters" section for all, one per function."""
    sections = json.loads(path.read_text(encoding="utf-8"))
    return {**sections.get("Parameters", {}), **sections.get(logical_id, {})}


def resolve_handler(dotted: str) -> Callable[[Any, Any], Any]:
    functions = str(ROOT / "functions")
    if functions not in sys.path:
        sys.path.insert(0, functions)
    module_name, _, attribute = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


def invoke(function: str, event: Any, environment: Mapping[str, str], region: str) -> Any:
    """Call the function's handler here, in its environment, with a context that counts down its timeout."""
    properties = function_properties(load_template(), function)
    os.environ.update(environment)
    # Lambda sets AWS_REGION itself; the configuration reads it.
    os.environ.setdefault("AWS_REGION", region)
    handler = resolve_handler(properties["Handler"])
    return handler(event, FakeContext(function, float(properties["Timeout"]), int(properties["MemorySize"])))


def aws_session() -> boto3.Session:
    session = boto3.Session()
    if session.get_credentials() is None:
        raise SystemExit(
            "error: no AWS credentials found. The handler calls real AWS (EC2, SSM): "
            "configure a profile or export AWS_PROFILE / AWS_ACCESS_KEY_ID first."
        )
    if not session.region_name:
        raise SystemExit("error: no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION) to the stack's region.")
    return session


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("function", help="logical id in template.yaml, e.g. ScalerFunction")
    parser.add_argument("event", type=Path, help="event JSON file, e.g. events/scaler-dry-run.json")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--stack", help="take the environment from this deployed stack's function")
    source.add_argument("--env-file", type=Path, help="take the environment from a sam --env-vars JSON file")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    event = json.loads(args.event.read_text(encoding="utf-8"))
    session = aws_session()
    environment: dict[str, str] = {}
    if args.stack:
        environment = deployed_environment(session, args.stack, args.function)
    elif args.env_file:
        environment = file_environment(args.env_file, args.function)
    result = invoke(args.function, event, environment, session.region_name)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
