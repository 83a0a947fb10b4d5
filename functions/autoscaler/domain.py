"""The fleet's domain types: what a launch asks for, how it fails, and the fleet interface.

Plain data and a Protocol, no boto3: the planner, the launcher, the pipeline
and the simulation use these without importing the EC2 adapter (`fleet`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from autoscaler.config import ON_DEMAND
from autoscaler.lifecycle import LIVE_STATES, Instance

# Errors after which another instance type or subnet may succeed.
CAPACITY_ERRORS = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientHostCapacity",
        "InsufficientFreeAddressesInSubnet",
        "Unsupported",
        "VcpuLimitExceeded",
        "InstanceLimitExceeded",
        # Spot only: the account's spot vCPU quota, or no pool at our price.
        "MaxSpotInstanceCountExceeded",
        "SpotMaxPriceTooLow",
    }
)


@dataclass(frozen=True)
class LaunchSpec:
    """One RunInstances call: `count` instances of one type in one subnet."""

    fleet: str
    queue: str
    role: str
    launch_template_id: str
    instance_type: str
    subnet_id: str
    user_data: bytes
    count: int
    client_token: str
    market: str = ON_DEMAND
    # IMAGE_TAG's value: the version of the image the launch template resolves to; "" when unknown.
    image: str = ""


# A pool is one instance type in one subnet: the unit of spot capacity.
Pool = tuple[str, str]  # (instance_type, subnet_id)


class LaunchError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code

    @property
    def capacity(self) -> bool:
        return self.code in CAPACITY_ERRORS


@dataclass(frozen=True)
class TemplateVersion:
    """A launch template's latest version and the image it launches now."""

    version: str
    image_id: str


class Fleet(Protocol):
    def list_instances(self, states: Sequence[str] = LIVE_STATES) -> list[Instance]: ...

    def run(self, spec: LaunchSpec) -> list[str]: ...

    def terminate(self, instance_id: str) -> None: ...

    def console_output(self, instance_id: str) -> str: ...

    # Warm pool (called only when a queue has one).
    def start(self, instance_id: str, now: datetime) -> None: ...

    def set_on_exit(self, instance_id: str, action: str) -> None: ...

    def latest_templates(self, template_ids: Iterable[str]) -> dict[str, TemplateVersion]: ...
