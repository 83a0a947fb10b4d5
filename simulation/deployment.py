"""What `sam deploy` with the template's defaults deploys, read from template.yaml at run time.

The simulation's default scenario and the cost model's stack figures come from
here, so they cannot drift from the template. Queues go through the product's
own `queues_from_env`, exactly as the scaler reads its `QUEUES` variable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autoscaler.config import QueueConfig, queues_from_env

TEMPLATE = Path(__file__).resolve().parent.parent / "template.yaml"
SUBNET = "subnet-sim"  # SubnetIds has no default: the simulation's placeholder


class TemplateError(ValueError):
    """The template lacks something the simulation reads from it."""


@dataclass(frozen=True)
class Deployment:
    queues: tuple[QueueConfig, ...]
    env: dict[str, str]  # the scaler's and reaper's variables that are plain values
    scaler_period: float  # seconds between scheduled invocations
    reaper_period: float
    scaler_timeout: float
    memory_mb: dict[str, int]  # per function logical id
    scaler_function: str
    reaper_function: str
    alarms: int
    dashboards: int
    root_volume_gib: int
    log_retention_days: int
    # The image bake: each pipeline's first build instance type, the image volume, images kept.
    bake_instance_types: tuple[str, ...] = ()
    image_volume_gib: int = 0
    images_kept: int = 0


class _Loader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags kept as `{"Tag": value}`."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    return {suffix: loader.construct_mapping(node, deep=True)}  # type: ignore[arg-type]


_Loader.add_multi_constructor("!", _tag)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    with path.open() as handle:
        return yaml.load(handle, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def deployment(path: Path = TEMPLATE) -> Deployment:
    template = load_template(path)
    params = template["Parameters"]
    resources = template["Resources"]
    functions = {name: r for name, r in resources.items() if r["Type"] == "AWS::Serverless::Function"}
    scaler = _function_with(functions, "QUEUES")
    reaper = _function_with(functions, "REAPER_MAX_TERMINATIONS")
    env = {
        key: str(_resolve(value, params, {}))
        for key, value in {
            **template["Globals"]["Function"]["Environment"]["Variables"],
            **functions[scaler]["Properties"]["Environment"]["Variables"],
            **functions[reaper]["Properties"]["Environment"]["Variables"],
        }.items()
        if key != "QUEUES"
    }
    memory = template["Globals"]["Function"].get("MemorySize", 128)
    return Deployment(
        queues=queues_from_env({**env, "QUEUES": queues_json(functions[scaler], params)}),
        env=env,
        scaler_period=_rate(functions[scaler]),
        reaper_period=_rate(functions[reaper]),
        scaler_timeout=float(functions[scaler]["Properties"]["Timeout"]),
        memory_mb={name: int(f["Properties"].get("MemorySize", memory)) for name, f in functions.items()},
        scaler_function=scaler,
        reaper_function=reaper,
        alarms=sum(r["Type"] == "AWS::CloudWatch::Alarm" for r in resources.values()),
        # The dashboard is optional (DashboardEnabled): counted when its default deploys it.
        dashboards=sum(r["Type"] == "AWS::CloudWatch::Dashboard" for r in resources.values())
        * (str(params["DashboardEnabled"]["Default"]) == "true"),
        root_volume_gib=int(params["RootVolumeSize"]["Default"]),
        log_retention_days=int(params["LogRetentionDays"]["Default"]),
        bake_instance_types=tuple(
            r["Properties"]["InstanceTypes"][0]
            for r in resources.values()
            if r["Type"] == "AWS::ImageBuilder::InfrastructureConfiguration"
        ),
        image_volume_gib=max(
            (
                int(device["Ebs"]["VolumeSize"])
                for r in resources.values()
                if r["Type"] == "AWS::ImageBuilder::ImageRecipe"
                for device in r["Properties"]["BlockDeviceMappings"]
            ),
            default=0,
        ),
        images_kept=int(params["ImagesKept"]["Default"]),
    )


def queues_json(scaler: dict[str, Any], params: dict[str, Any]) -> str:
    """The scaler's `QUEUES` as deployed with every parameter at its default.

    The one place that knows how the template builds QUEUES (today the `Queues`
    parameter as it is); the launch templates and subnets it resolves through
    (LAUNCH_TEMPLATES, SUBNET_IDS), which only exist once deployed, are placeholders.
    """
    return str(_resolve(scaler["Properties"]["Environment"]["Variables"]["QUEUES"], params, {}))


def _function_with(functions: dict[str, Any], variable: str) -> str:
    for name, function in functions.items():
        if variable in function["Properties"].get("Environment", {}).get("Variables", {}):
            return name
    raise TemplateError(f"template: no function sets {variable} (functions: {', '.join(functions)})")


def _rate(function: dict[str, Any]) -> float:
    for event in function["Properties"]["Events"].values():
        match = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours)\)", event["Properties"]["ScheduleExpression"])
        if match:
            return float(match[1]) * (3600 if match[2].startswith("hour") else 60)
    raise TemplateError("template: a function has no rate(...) schedule")


def _resolve(node: Any, params: dict[str, Any], local: dict[str, Any]) -> Any:
    """Evaluate the few intrinsics the environment uses (Ref, Sub, Join, If) on the defaults."""
    if not isinstance(node, dict) or len(node) != 1:
        return node
    ((tag, value),) = node.items()
    if tag == "Ref":
        return _ref(value, params)
    if tag == "Join":
        separator, items = value
        parts = _resolve(items, params, local)
        return separator.join(str(_resolve(part, params, local)) for part in parts)
    if tag == "Sub":
        text, variables = (value, {}) if isinstance(value, str) else value
        names = {key: _resolve(item, params, local) for key, item in variables.items()}
        return re.sub(r"\$\{([^}!]+)\}", lambda m: str(names.get(m[1], _ref(m[1], params))), text)
    if tag == "If":
        return ""  # conditions only pick regions and optional names: irrelevant here
    raise TemplateError(f"template: cannot evaluate !{tag} in the functions' environment (got {value!r})")


def _ref(name: str, params: dict[str, Any]) -> Any:
    """A parameter's default (a list for list types); a placeholder for a resource or a required value."""
    if name.startswith("AWS::"):
        return "us-east-1"
    spec = params.get(name)
    if spec is None:
        return f"{name}-sim"  # a resource: the launch templates
    is_list = "List" in spec["Type"]
    if "Default" not in spec:
        return [SUBNET] if is_list else f"{name}-sim"
    return str(spec["Default"]).split(",") if is_list else spec["Default"]
