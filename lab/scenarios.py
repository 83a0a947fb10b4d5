"""The lab's scenarios: each boots the real rendered user-data through the whole loop and
checks what a user would see (tags, jobs, the console, the instance's end).

A check that fails names what to look at: the scenario, what was expected, and the
instance script most likely at fault.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import boto3

from autoscaler.telemetry import logger as product_logger
from lab.milestones import Timings, report, timings
from lab.vm import Vm
from lab.world import QueueSetup, World, wait_until

# Hard bounds under TCG on a shared 2-core host; KVM needs a fraction.
BOOT_SECONDS = 420
JOB_SECONDS = 180
EXIT_SECONDS = 300
# The spot watcher polls every 5 s: more curl errors than this on a console is a flood.
CURL_ERROR_LIMIT = 3
CONSOLE_LIMIT = 64 * 1024  # what GetConsoleOutput keeps
COMPLETE = re.compile(r"buildkite-bootstrap: complete")
FAILED = re.compile(r"FAILED step=(\w+) exit=(\d+)")
HOSTILE_MARK = "lab-hostile"
# Plants what botocore and curl read from $HOME, as a hostile job could.
HOSTILE_JOB = (
    f"mkdir -p ~/.aws && printf '[default]\\ncredential_process = /bin/sh -c \"logger -t {HOSTILE_MARK} "
    f"aws-config-ran-as-uid-$(id -u); exit 1\"\\n' > ~/.aws/config && "
    f"printf 'header = \"X-Lab-Hostile: curlrc\"\\n' > ~/.curlrc && echo planted"
)


class ScenarioFailed(AssertionError):
    """A scenario's check failed; the message says what and where to look."""


@dataclass
class Outcome:
    name: str
    timings: list[Timings] = field(default_factory=list)


def hint(step: str, code: str) -> str:
    """Where to look for a bootstrap step's failure."""
    if step == "mark_complete" and code == "143":
        return (
            "the agent idled out while mark_complete's CreateTags was in flight: the idle-timeout race "
            "(start_agent in userdata/steps/agent.sh, mark_complete in userdata/steps/completion.sh, "
            "and the agent's idle timer)"
        )
    if step == "start_agent" and code == "143":
        return (
            "the agent exited on purpose (a refused job, a drain) during start_agent's checks and the step "
            "was marked failed (start_agent in userdata/steps/agent.sh)"
        )
    if step == "check_tag_permission":
        return "check_tag_permission in userdata/steps/completion.sh (a refusal or a network error?)"
    if step == "check_image":
        return "check_image: the image booted another root mode (overlayroot driver missing from the initramfs?)"
    return f"step {step}: `grep -n '^{step}()' userdata/steps/*.sh`"


def console_text(vm: Vm) -> str:
    return "\n".join(text for _, text in vm.lines)


def check_no_flood(name: str, vm: Vm) -> None:
    errors = sum("curl: (22)" in text for _, text in vm.lines)
    if errors > CURL_ERROR_LIMIT:
        raise ScenarioFailed(
            f"[{name}] {errors} curl errors on the console: the spot watcher's 404 polls flood it "
            f"(userdata/spot-interruption-watch.sh), pushing the bootstrap's lines out of EC2's 64 KiB"
        )


def check_no_failed_step(name: str, vm: Vm) -> None:
    for _, text in vm.lines:
        failure = FAILED.search(text)
        if failure:
            raise ScenarioFailed(f"[{name}] the bootstrap failed: {text.strip()} -> {hint(*failure.groups())}")


def expect_line(name: str, vm: Vm, pattern: str, seconds: float, what: str, allow_failure: bool = False) -> float:
    """Waits for a console line; fails at once on an unexpected FAILED step, with its hint."""
    wanted = re.compile(pattern)
    seen = 0

    def done() -> bool:
        nonlocal seen
        for _, text in vm.lines[seen:]:
            failure = FAILED.search(text)
            if failure and not allow_failure:
                raise ScenarioFailed(
                    f"[{name}] {what}: the bootstrap failed: {text.strip()} -> {hint(*failure.groups())}"
                )
            if wanted.search(text):
                return True
            seen += 1
        return False

    if not vm.wait_for(done, time.monotonic() + seconds):
        tail = "\n    ".join(text for _, text in vm.lines[-15:])
        raise ScenarioFailed(
            f"[{name}] {what}: no /{pattern}/ on the console within {seconds:.0f}s; last lines:\n    {tail}"
        )
    return vm.elapsed()


def expect_power_off(name: str, vm: Vm, seconds: float, what: str) -> float:
    if vm.wait_exit(seconds) is None:
        tail = "\n    ".join(text for _, text in vm.lines[-15:])
        raise ScenarioFailed(
            f"[{name}] {what}: the VM did not power off within {seconds:.0f}s; last lines:\n    {tail}"
        )
    return vm.elapsed()


def expect(name: str, ok: bool, message: str) -> None:
    if not ok:
        raise ScenarioFailed(f"[{name}] {message}")


def launch_one(name: str, lab: World) -> str:
    summary = lab.run_scaler()
    ids = lab.fleet_ids()
    expect(name, len(ids) == 1, f"the scaler launched {ids}, expected one instance ({summary})")
    return ids[0]


def finish(name: str, lab: World, vm: Vm, outcome: Outcome) -> None:
    exit_time = vm.elapsed() if not vm.running() else None
    timing = timings(vm.lines, exit_time)
    outcome.timings.append(timing)
    lab.log(report(name, timing))


@contextmanager
def console_output_from(vm_ref: list[Vm]) -> Iterator[None]:
    """GetConsoleOutput answers with the VM's serial log (its last 64 KiB), as EC2's does."""

    def answer(**_: Any) -> tuple[Any, dict[str, Any]] | None:
        if not vm_ref:
            return None
        text = console_text(vm_ref[0])[-CONSOLE_LIMIT:]
        # base64, as EC2 sends it: boto3 decodes it after the call.
        output = base64.b64encode(text.encode()).decode()
        return SimpleNamespace(status_code=200), {"Output": output, "InstanceId": vm_ref[0].spec.instance_id}

    events = boto3.DEFAULT_SESSION.events
    events.register("before-call.ec2.GetConsoleOutput", answer)
    try:
        yield
    finally:
        events.unregister("before-call.ec2.GetConsoleOutput", answer)


@contextmanager
def captured_logs() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger = logging.getLogger(product_logger.name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


# ------------------------------------------------------------------ scenarios


def baked_boot(name: str, lab: World, outcome: Outcome) -> tuple[str, Vm]:
    """Scheduled job → scaler launch → boot → complete → job → idle out → power-off → terminated."""
    job = lab.api.schedule(lab.queue.name, "echo lab job ran as $(id -un) in $PWD")
    instance_id = launch_one(name, lab)
    with lab.vm(instance_id, name) as vm:
        expect_line(name, vm, COMPLETE.pattern, BOOT_SECONDS, "bootstrap complete")
        expect(name, lab.api.wait_for_state(job, "finished", JOB_SECONDS), f"job {job.id} never finished")
        expect_power_off(name, vm, lab.queue.idle_timeout_seconds + EXIT_SECONDS, "idle out and power off")
        finish(name, lab, vm, outcome)
        check_no_flood(name, vm)
        lab.shut_down(instance_id)
        tags = lab.tags(instance_id)
        expect(name, tags.get("buildkite-autoscaler:bootstrap") == "complete", f"tags after the boot: {tags}")
        expect(name, "buildkite-autoscaler:ready-at" in tags, f"no ready-at tag: {tags}")
        expect(name, job.exit_status == 0, f"job exit {job.exit_status}: {job.log}")
        expect(name, "ran as buildkite-agent" in job.log, f"the job did not run as buildkite-agent: {job.log}")
        expect(name, "exited 0: powering off" in console_text(vm), "no 'exited 0: powering off' from agent-exited.sh")
        return instance_id, vm


def scenario_baked_ebs(lab: World, outcome: Outcome) -> None:
    instance_id, _ = baked_boot("baked-ebs", lab, outcome)
    reaped = lab.run_reaper()
    expect("baked-ebs", instance_id not in str(reaped.get("terminated", "")), f"the reaper touched it: {reaped}")


def scenario_baked_overlayroot(lab: World, outcome: Outcome) -> None:
    _, vm = baked_boot("baked-overlayroot", lab, outcome)
    text = console_text(vm)
    expect(
        "baked-overlayroot",
        "configured root with 'tmpfs'" in text,
        "overlayroot did not apply in the initramfs (its driver or busybox's grep missing?)",
    )
    size = re.search(r"tmpfs\S*\s+(\S+)\s+\S+\s+\S+\s+\S+\s+/media/root-rw", text)
    expect("baked-overlayroot", size is not None and size.group(1) == "512M", f"tmpfs size in the VM: {size}")


def scenario_spot(lab: World, outcome: Outcome) -> None:
    name = "spot-interruption"
    # Long enough to be running when the notice comes, after the bootstrap completed.
    lab.api.schedule(lab.queue.name, "echo spot job; sleep 90; echo drained")
    instance_id = launch_one(name, lab)
    with lab.vm(instance_id, name) as vm:
        expect_line(name, vm, COMPLETE.pattern, BOOT_SECONDS, "bootstrap complete")
        expect_line(name, vm, r"running job", JOB_SECONDS, "the job starts")
        ends = (datetime.now(UTC) + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
        lab.extras[instance_id].spot_action = {"action": "terminate", "time": ends}
        expect_line(name, vm, r"interruption notice", 60, "the watcher sees the notice")
        expect_line(name, vm, r"sent SIGTERM", 60, "the watcher drains the agent")
        expect_line(name, vm, r"finished job \S+ with exit status 0", 120, "the running job finishes")
        expect_power_off(name, vm, EXIT_SECONDS, "power off after the drain")
        finish(name, lab, vm, outcome)
        text = console_text(vm)
        expect(name, "stopped on a spot interruption: powering off" in text, "agent-exited.sh did not power off")
        expect(name, "second SIGTERM" not in text, "the agent got a second SIGTERM: its job was cancelled")
        check_no_flood(name, vm)
        lab.shut_down(instance_id)


def scenario_refused_tags(lab: World, outcome: Outcome) -> None:
    name = "refused-createtags"
    lab.front.refused.add("CreateTags")
    lab.api.schedule(lab.queue.name, "echo never taken: the instance fails before its agent starts")
    instance_id = launch_one(name, lab)
    vm_ref: list[Vm] = []
    with lab.vm(instance_id, name) as vm:
        vm_ref.append(vm)
        expect_line(name, vm, r"REFUSED: ec2:CreateTags", BOOT_SECONDS, "the refusal named", allow_failure=True)
        expect_line(name, vm, r"FAILED step=check_tag_permission", 60, "the step named", allow_failure=True)
        expect_power_off(name, vm, EXIT_SECONDS, "power off after the failure")
        finish(name, lab, vm, outcome)
        expect(name, "could not tag" in console_text(vm), "no 'could not tag ... as failed' on the console")
        tags = lab.tags(instance_id)
        expect(name, tags.get("buildkite-autoscaler:bootstrap") == "pending", f"moto's tags: {tags}")
        # EC2 would terminate it at power-off; the reaper sees one that hangs instead: past the timeout.
        with console_output_from(vm_ref), captured_logs() as records:
            lab.environ_for_reaper(bootstrap_timeout=60)
            lab.run_reaper()
        tails = [str(getattr(r, "console_tail", "")) for r in records]
        expect(
            name,
            any("check_tag_permission" in t for t in tails),
            "the reaper's console tail misses the reason: after the power-off its last lines are the shutdown's "
            f"(functions/autoscaler/reaper.py, redact.py redacted_tail); it logged: {[t[-300:] for t in tails]}",
        )
        lab.shut_down(instance_id)


def scenario_low_space(lab: World, outcome: Outcome) -> None:
    name = "low-build-space"
    job = lab.api.schedule(lab.queue.name, "echo this must not run")
    instance_id = launch_one(name, lab)
    with lab.vm(instance_id, name) as vm:
        # The job may come before the bootstrap completes: the agent takes it as soon as it connects.
        expect_line(name, vm, r"finished job", BOOT_SECONDS + JOB_SECONDS, "the job is refused")
        expect_power_off(name, vm, EXIT_SECONDS, "the instance retires")
        finish(name, lab, vm, outcome)
        check_no_failed_step(name, vm)
        text = console_text(vm)
        expect(name, job.exit_status == 75, f"job exit {job.exit_status}, expected 75: {job.log}")
        expect(name, "build space nearly full" in job.log, f"the job's log does not say why: {job.log}")
        expect(name, "this must not run" not in job.log, "the command ran despite the full disk")
        expect(name, text.count("received SIGTERM") == 1 and "second SIGTERM" not in text, "the agent stopped twice")
        expect(name, "exited 0: powering off" in text, "the instance did not retire through agent-exited.sh")
        lab.shut_down(instance_id)


def scenario_warm_pool(lab: World, outcome: Outcome) -> None:
    """First boot parks; the scaler starts it for a job; the job is hostile; it goes back to the pool.

    The hostile job runs here because only a started pool instance on overlayroot runs
    curl and aws as root after a job (`release`, from agent-exited.sh).
    """
    name = "warm-pool"
    instance_id = launch_one(name, lab)
    with lab.vm(instance_id, f"{name}-first-boot") as vm:
        expect_line(name, vm, r"stopping into the warm pool", BOOT_SECONDS, "first boot parks")
        expect(name, wait_until(lambda: lab.state(instance_id) == "stopped", 60), "moto never saw the stop")
        vm.power_down()
        expect_power_off(name, vm, 120, "the stop powers the VM down")
        finish(name, lab, vm, outcome)
        expect(name, "buildkite-bootstrap: complete" not in console_text(vm), "the parked boot started an agent")
    expect(name, lab.tags(instance_id).get("buildkite-autoscaler:bootstrap") == "pooled", "not tagged pooled")
    job = lab.api.schedule(lab.queue.name, HOSTILE_JOB)
    lab.run_scaler()
    expect(name, lab.state(instance_id) in ("pending", "running"), f"the scaler did not start {instance_id}")
    with lab.vm(instance_id, f"{name}-start") as vm:
        expect_line(name, vm, COMPLETE.pattern, BOOT_SECONDS, "the started instance completes")
        expect(name, lab.api.wait_for_state(job, "finished", JOB_SECONDS), f"job {job.id} never finished")
        expect_line(name, vm, r"buildkite-agent exited 0", lab.queue.idle_timeout_seconds + EXIT_SECONDS, "idle out")
        if "back into the warm pool" in console_text(vm) or lab.state(instance_id) in ("stopping", "stopped"):
            expect(name, wait_until(lambda: lab.state(instance_id) == "stopped", 60), "moto never saw the stop")
            vm.power_down()
        expect_power_off(name, vm, 120, "the instance ends (pool or terminated, per its on-exit tag)")
        finish(name, lab, vm, outcome)
        lab.shut_down(instance_id)
        # First: a hostile file that ran as root also breaks the calls that follow.
        check_hostile(name, lab, vm)
        on_exit = lab.tags(instance_id).get("buildkite-autoscaler:on-exit")
        ended = lab.state(instance_id)
        expect(name, ended == ("stopped" if on_exit == "stop" else "terminated"), f"on-exit={on_exit} but {ended}")
        expect(name, job.exit_status == 0, f"job exit {job.exit_status}: {job.log}")


def check_hostile(name: str, lab: World, vm: Vm) -> None:
    root_lines = [t for _, t in vm.lines if HOSTILE_MARK in t and "uid-0" in t]
    expect(name, not root_lines, f"the job's ~/.aws/config ran as root (HOME escape in agent-exited.sh): {root_lines}")
    assert lab.imds is not None
    curl = [h for _, _, h in lab.imds.metadata.requests if "x-lab-hostile" in h]
    expect(name, not curl, "the job's ~/.curlrc was read by a root curl (HOME escape in agent-exited.sh)")


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    queue: QueueSetup
    run: Callable[[World, Outcome], None]


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("baked-ebs", "baked image, EBS root: launch, job, idle out, terminate", QueueSetup(), scenario_baked_ebs),
    Scenario(
        "baked-overlayroot",
        "baked image, overlayroot: the tmpfs size checked inside the VM",
        QueueSetup(root_mode="overlayroot"),
        scenario_baked_overlayroot,
    ),
    Scenario(
        "warm-pool",
        "pool: first boot parks, the scaler starts it, a hostile job, back to the pool",
        QueueSetup(root_mode="overlayroot", warm_pool_size=1),
        scenario_warm_pool,
    ),
    Scenario(
        "spot-interruption",
        "spot: notice, drain, the job finishes, power off",
        QueueSetup(capacity_type="spot"),
        scenario_spot,
    ),
    Scenario(
        "refused-createtags",
        "the role may not tag: failed, the console and the reaper's tail say why",
        QueueSetup(),
        scenario_refused_tags,
    ),
    Scenario(
        "low-build-space",
        "a job refused for build space: exit 75, one stop, the instance retires",
        QueueSetup(min_free_space_gib=50),
        scenario_low_space,
    ),
)


def by_name(name: str) -> Scenario:
    for scenario in SCENARIOS:
        if scenario.name == name:
            return scenario
    raise KeyError(f"no scenario {name!r}; --list shows them: {', '.join(s.name for s in SCENARIOS)}")
