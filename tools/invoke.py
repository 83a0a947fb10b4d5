"""Run one of the stack's Lambda handlers in this process, without Docker.

    python tools/invoke.py ScalerFunction events/scaler-dry-run.json --stack buildkite-autoscaler
    python tools/invoke.py ReaperFunction events/reaper-dry-run.json --env-file env.json
    python tools/invoke.py ScalerFunction events/scaler-scheduled.json --offline \
        --scenario events/scenarios/burst.json --polls 2

The handler and its timeout come from template.yaml. Its environment comes from
the deployed function (--stack) or from a `sam local invoke --env-vars` file
(--env-file); the process's own environment fills the rest. It talks to real
AWS with your credentials, so it stops early and says so when there are none.

With --offline it needs no account and no network: AWS is moto in this
process, the metrics API a fake on loopback answering as the scenario file
says, the fleet the scenario's instances, and time is simulated, so the
scaler runs exactly --polls polls without waiting. The environment comes
from --env-file (default events/env.json) with its AWS ids and endpoint
pointed at the emulators. It prints the decisions as readable lines, then
the handler's summary.
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
OFFLINE_ENV_FILE = ROOT / "events" / "env.json"
# Both the functions (the Lambda package) and the repository (the emulators) are importable.
for _path in (str(ROOT / "functions"), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)


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


def resolve_handler(dotted: str) -> Callable[..., Any]:
    module_name, _, attribute = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


def invoke(function: str, event: Any, environment: Mapping[str, str], region: str) -> Any:
    """Call the function's handler here, in its environment, with a context that counts down its timeout."""
    properties = function_properties(load_template(), function)
    os.environ.update(environment)
    # Lambda sets both: the configuration reads AWS_REGION, boto3 AWS_DEFAULT_REGION.
    os.environ["AWS_REGION"] = os.environ["AWS_DEFAULT_REGION"] = region
    handler = resolve_handler(properties["Handler"])
    return handler(event, FakeContext(function, float(properties["Timeout"]), int(properties["MemorySize"])))


def invoke_offline(function: str, event: Any, env_file: Path, scenario_file: Path, polls: int | None) -> Any:
    """Call the handler against the emulators, printing its log as readable lines."""
    # Imported here: moto and freezegun load only for an offline run.
    from emulators import offline  # noqa: PLC0415
    from tools.log_view import readable  # noqa: PLC0415

    from autoscaler.telemetry import logger  # noqa: PLC0415

    properties = function_properties(load_template(), function)
    scenario = offline.load_scenario(scenario_file)
    handler = resolve_handler(properties["Handler"])
    environment = file_environment(env_file, function)
    # The stack has a launch template per queue whichever function runs; the scaler's QUEUES names them.
    stack_queues = file_environment(env_file, "ScalerFunction").get("QUEUES", "[]")
    region = region_from_environment(os.environ) or offline.DEFAULT_REGION
    print(f"{function} offline: {scenario_file.name}: {scenario.description}")
    with readable(logger):
        return offline.run(
            handler,
            function,
            int(properties["MemorySize"]),
            event,
            environment,
            stack_queues,
            scenario,
            polls or scenario.polls,
            region,
        )


def region_from_environment(environ: Mapping[str, str]) -> str | None:
    """The region the AWS CLI v1 and v2 and boto3 all agree on, from the environment.

    boto3 (and so the CLI v1) reads only AWS_DEFAULT_REGION; the CLI v2 reads
    AWS_REGION first. Either one alone is taken; both, only when they agree.
    """
    default, plain = environ.get("AWS_DEFAULT_REGION"), environ.get("AWS_REGION")
    if default and plain and default != plain:
        raise SystemExit(
            f"error: AWS_DEFAULT_REGION={default} and AWS_REGION={plain} disagree: the AWS CLI v2 would use "
            f"{plain}, boto3 and the CLI v1 {default}. Set AWS_DEFAULT_REGION only."
        )
    return default or plain or None


def aws_session() -> boto3.Session:
    region = region_from_environment(os.environ)
    session = boto3.Session(region_name=region) if region else boto3.Session()
    if session.get_credentials() is None:
        raise SystemExit(
            "error: no AWS credentials found. The handler calls real AWS (EC2, SSM): "
            "configure a profile or export AWS_PROFILE / AWS_ACCESS_KEY_ID first, "
            "or run it offline against emulators (make invoke-scaler OFFLINE=1)."
        )
    if not session.region_name:
        raise SystemExit(
            "error: no AWS region: export AWS_DEFAULT_REGION=<the stack's region> "
            "(read by boto3 and the AWS CLI v1 and v2), or set region in your AWS profile."
        )
    return session


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("function", help="logical id in template.yaml, e.g. ScalerFunction")
    parser.add_argument("event", type=Path, help="event JSON file, e.g. events/scaler-dry-run.json")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--stack", help="take the environment from this deployed stack's function")
    source.add_argument("--env-file", type=Path, help="take the environment from a sam --env-vars JSON file")
    parser.add_argument("--offline", action="store_true", help="run against moto and a local metrics fake")
    parser.add_argument("--scenario", type=Path, help="offline: the scenario file (events/scenarios/*.json)")
    parser.add_argument("--polls", type=_positive, help="offline: scaler polls to run (default: the scenario's, 1)")
    args = parser.parse_args(argv)
    if args.offline and args.stack:
        parser.error("--offline takes its environment from --env-file, not --stack")
    if args.offline and not args.scenario:
        parser.error("--offline needs --scenario (e.g. events/scenarios/burst.json)")
    if not args.offline and (args.scenario or args.polls):
        parser.error("--scenario and --polls are for --offline")
    return args


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1 (got {text!r})")
    return int(text)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    event = json.loads(args.event.read_text(encoding="utf-8"))
    if args.offline:
        return _main_offline(args, event)
    session = aws_session()
    environment: dict[str, str] = {}
    if args.stack:
        environment = deployed_environment(session, args.stack, args.function)
    elif args.env_file:
        environment = file_environment(args.env_file, args.function)
    result = invoke(args.function, event, environment, session.region_name)
    print(json.dumps(result, indent=2, default=str))
    return 0


def _main_offline(args: argparse.Namespace, event: Any) -> int:
    try:
        result = invoke_offline(args.function, event, args.env_file or OFFLINE_ENV_FILE, args.scenario, args.polls)
    except Exception as error:  # noqa: BLE001 - the invocation failed, as Lambda would report it
        print(f"invocation failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
