"""Measure what the README reports: EC2 calls and wall time of one scaler poll
with 1,000 fleet instances on moto, in metrics mode and in observe mode (200
scheduled jobs listed from the Stacks fake on loopback), and the handler's cold
import time.

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
from emulators.buildkite import FakeBuildkite
from emulators.stacks import FakeJob
from moto import mock_aws
from simulation.runner import FLEET, default_scenario, scaler_settings

from autoscaler.buildkite import MetricsSnapshot, Secret
from autoscaler.config import QueueConfig
from autoscaler.fleet import Ec2Fleet
from autoscaler.lifecycle import BOOTSTRAP_TAG, FLEET_TAG, QUEUE_TAG, ROLE_TAG
from autoscaler.observer import JobsObserver
from autoscaler.planner import QueueMetrics
from autoscaler.scaling import Scaler
from autoscaler.stacks import StacksClient, stack_key
from autoscaler.telemetry import logger

INSTANCES = 1000
SCHEDULED_JOBS = 200
SCOPE = ("000000000000", "us-east-1")  # the account and region the stacks are registered in


class StaticMetrics:
    def fetch(self, queues: object) -> MetricsSnapshot:
        return MetricsSnapshot({"nixos-x86-aws": QueueMetrics(scheduled=4000, total=4000)})


def observer(queues: tuple[QueueConfig, ...], fake: FakeBuildkite) -> JobsObserver:
    """Observe mode against the Stacks fake: a cluster token, 200 jobs on the x86 queue."""
    fake.stacks.cluster_uuid = "c-1"
    for queue in queues:
        key = stack_key(FLEET, queue.name, *SCOPE)
        fake.stacks.stacks[key] = {"key": key}
        fake.stacks.queue(queue.name)
    fake.stacks.queue("nixos-x86-aws").jobs = [
        FakeJob(f"job-{n:04d}", ["queue=nixos-x86-aws"], f"2026-12-01T10:{n // 60:02d}:{n % 60:02d}Z")
        for n in range(SCHEDULED_JOBS)
    ]
    return JobsObserver(StacksClient(fake.endpoint, lambda: Secret("bkct_measure")), FLEET, queues, SCOPE)


def poll_at_scale(observe: bool) -> None:
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
        fake = FakeBuildkite().start()
        jobs = observer(queues, fake) if observe else None
        try:
            scaler = Scaler(settings, StaticMetrics(), Ec2Fleet(ec2, FLEET), lambda queue, role: b"", jobs=jobs)
            times = []
            for _ in range(5):
                started = time.perf_counter()
                result = scaler.poll(datetime.now(UTC), dry_run=True)
                times.append(time.perf_counter() - started)
        finally:
            fake.stop()
        plan = result.queues["nixos-x86-aws"].plan
        stacks_calls = [request["route"] for request in fake.stacks.requests]
        mode = f"observe mode, {SCHEDULED_JOBS} scheduled jobs" if observe else "metrics mode"
        print(
            f"{mode}: poll with {plan.live} fleet instances on moto: median {statistics.median(times) * 1000:.0f} ms "
            f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}); "
            f"EC2 calls per poll: {len(calls) // len(times)} ({', '.join(sorted(set(calls)))}); "
            f"Stacks API calls in {len(times)} polls: {len(stacks_calls)} ({', '.join(sorted(set(stacks_calls)))})"
        )


def cold_import(module: str, runs: int = 7) -> None:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    env = {**os.environ, "PYTHONPATH": "functions", "AWS_DEFAULT_REGION": "us-east-1"}
    command = [sys.executable, "-c", code]
    # A fresh interpreter each run: a cold import, as in a new Lambda sandbox.
    samples = [float(subprocess.check_output(command, env=env)) for _ in range(runs)]  # noqa: S603 - fixed argv
    print(f"cold import of {module}: median {statistics.median(samples) * 1000:.0f} ms over {runs} runs")


if __name__ == "__main__":
    poll_at_scale(observe=False)
    poll_at_scale(observe=True)
    cold_import("autoscaler.scaler")
    cold_import("autoscaler.reaper")
