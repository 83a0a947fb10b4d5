"""Measure what the README reports: EC2 calls, wall time and memory of one scaler
poll with 1,000 fleet instances on moto, in metrics mode and in observe mode (200
scheduled jobs listed from the Stacks fake on loopback), and the handlers' cold
start (import and AWS clients) with the memory it leaves in use.

    PYTHONPATH=functions:. .venv/bin/python tools/measure.py

The scaler's peak memory is the process's peak RSS after a cold start (what Lambda's
"Max Memory Used" counts) plus the Python allocations one poll peaks at; moto answers
the poll in the same process, so its share of that peak makes it an upper bound.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import tracemalloc
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
MB = 1024 * 1024
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
            # Traced apart from the timed polls: tracing slows every allocation many times over.
            tracemalloc.start()
            scaler.poll(datetime.now(UTC), dry_run=True)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        finally:
            fake.stop()
        plan = result.queues["nixos-x86-aws"].plan
        stacks_calls = [request["route"] for request in fake.stacks.requests]
        mode = f"observe mode, {SCHEDULED_JOBS} scheduled jobs" if observe else "metrics mode"
        print(
            f"{mode}: poll with {plan.live} fleet instances on moto: median {statistics.median(times) * 1000:.0f} ms "
            f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}); "
            f"EC2 calls per poll: {len(calls) // len(times)} ({', '.join(sorted(set(calls)))}); "
            f"Stacks API calls in {len(times)} polls: {len(stacks_calls)} ({', '.join(sorted(set(stacks_calls)))}); "
            f"Python allocations peak at {peak / MB:.1f} MB during a poll (moto's included)"
        )


def cold_start(module: str, clients: tuple[str, ...], runs: int = 7) -> None:
    """Import the handler and create its AWS clients in a fresh interpreter, as a new Lambda sandbox does."""
    code = (
        "import resource, time; t = time.perf_counter(); import boto3; "
        f"import {module}; [boto3.client(name) for name in {clients!r}]; "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    env = {**os.environ, "PYTHONPATH": "functions", "AWS_DEFAULT_REGION": "us-east-1"}
    command = [sys.executable, "-c", code]
    samples = [subprocess.check_output(command, env=env).split() for _ in range(runs)]  # noqa: S603 - fixed argv
    seconds = statistics.median(float(duration) for duration, _ in samples)
    rss = max(int(kilobytes) for _, kilobytes in samples) / 1024
    print(
        f"cold start of {module} (import and {', '.join(clients)} clients): median {seconds * 1000:.0f} ms "
        f"over {runs} runs; peak RSS {rss:.0f} MB"
    )


if __name__ == "__main__":
    cold_start("autoscaler.scaler", ("ec2", "ssm"))
    cold_start("autoscaler.reaper", ("ec2",))
    poll_at_scale(observe=False)
    poll_at_scale(observe=True)
