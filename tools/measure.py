"""Measure what the README reports: EC2 calls and wall time of one scaler poll
with 1,000 fleet instances on moto, and the handler's cold import time.

    PYTHONPATH=functions:. .venv/bin/python tools/measure.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime

import boto3
from moto import mock_aws
from simulation.runner import FLEET, default_scenario, scaler_settings

from autoscaler.buildkite import MetricsSnapshot
from autoscaler.fleet import Ec2Fleet
from autoscaler.lifecycle import BOOTSTRAP_TAG, FLEET_TAG, QUEUE_TAG, ROLE_TAG
from autoscaler.planner import QueueMetrics
from autoscaler.scaling import Scaler
from autoscaler.telemetry import logger

INSTANCES = 1000


class StaticMetrics:
    def fetch(self, queues: object) -> MetricsSnapshot:
        return MetricsSnapshot({"nixos-x86-aws": QueueMetrics(scheduled=4000, total=4000)})


def poll_at_scale() -> None:
    # moto's conventional fake credentials, so nothing can reach a real account.
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ[key] = "testing"
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    logger.setLevel("WARNING")
    with mock_aws():
        ec2 = boto3.client("ec2")
        tags = {FLEET_TAG: FLEET, QUEUE_TAG: "nixos-x86-aws", ROLE_TAG: "burst", BOOTSTRAP_TAG: "complete"}
        spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
        for _ in range(INSTANCES // 100):
            ec2.run_instances(ImageId="ami-12345678", MinCount=100, MaxCount=100, TagSpecifications=spec)
        calls: list[str] = []
        ec2.meta.events.register("before-call.ec2", lambda model, **_: calls.append(model.name))
        scenario = default_scenario()
        queues = tuple(replace(q, max_instances=2000) if q.name == "nixos-x86-aws" else q for q in scenario.queues)
        settings = scaler_settings(replace(scenario, queues=queues))
        scaler = Scaler(settings, StaticMetrics(), Ec2Fleet(ec2, FLEET), lambda queue, role: b"")
        times = []
        for _ in range(5):
            started = time.perf_counter()
            result = scaler.poll(datetime.now(UTC), dry_run=True)
            times.append(time.perf_counter() - started)
        plan = result.queues["nixos-x86-aws"].plan
        print(
            f"poll with {plan.live} fleet instances on moto: median {statistics.median(times) * 1000:.0f} ms "
            f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}); "
            f"EC2 calls per poll: {len(calls) // len(times)} ({', '.join(sorted(set(calls)))})"
        )


def cold_import(module: str, runs: int = 7) -> None:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    env = {**os.environ, "PYTHONPATH": "functions", "AWS_DEFAULT_REGION": "us-east-1"}
    command = [sys.executable, "-c", code]
    # A fresh interpreter each run: a cold import, as in a new Lambda sandbox.
    samples = [float(subprocess.check_output(command, env=env)) for _ in range(runs)]  # noqa: S603 - fixed argv
    print(f"cold import of {module}: median {statistics.median(samples) * 1000:.0f} ms over {runs} runs")


if __name__ == "__main__":
    poll_at_scale()
    cold_import("autoscaler.scaler")
    cold_import("autoscaler.reaper")
