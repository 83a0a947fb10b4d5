"""The simulated world: jobs on Buildkite, instances on EC2, agents on the instances.

Event-driven on simulated seconds. Instances behave as the real user-data
makes them: they boot for a while, start their agents (which connect a few
seconds later), check them for AGENT_CHECK_SECONDS and tag themselves
complete (or hang, or tag failed and power off), and power off when their
agents exit for idleness or uptime. Agents only exit when idle, except on a
spot instance AWS reclaims: there the running jobs are cancelled before the
termination and retried, as the pipeline rule of docs/spot.md retries them.

Warm-pool instances (`role=pool`) live as the user-data makes them too: their
first boot ends in `park` (the volume read once, `bootstrap=pooled`, stopped);
a start runs the per-boot path only, for `pool_start_seconds`; and when their
agents exit, `release` decides from the same inputs as on the instance (its
role and root mode from the user-data, the scaler's `on-exit` tag) whether the
instance stops back into the pool or powers off. A stopped instance bills its
volume only.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from autoscaler.config import ON_DEMAND, SPOT
from autoscaler.lifecycle import (
    AGENT_CHECK_SECONDS,
    BOOTSTRAP_COMPLETE,
    BOOTSTRAP_FAILED,
    BOOTSTRAP_PENDING,
    BOOTSTRAP_POOLED,
    BOOTSTRAP_WARMING,
    ON_EXIT_STOP,
    ROLE_POOL,
    STOCK_IMAGE,
)
from simulation.trace import Job, Pause


@dataclass(frozen=True)
class BootPath:
    seconds: float  # launch → bootstrap=complete, typical
    jitter: float  # each boot takes seconds x (1 ± jitter)
    source: str
    image: str  # the image version the scaler tags its instances with (IMAGE_TAG)


# Launch to `bootstrap=complete`. Assumptions, not measurements of this fleet:
# replace them with your own (`--set boot_seconds=...`) once you have them.
BOOT_PATHS = {
    "stock": BootPath(
        420.0,
        0.25,
        "stock Ubuntu AMI: apt + Nix install, overlayroot reboot, agent start; about 7 min "
        "(5-9 min) as docs/instance-boot.md's steps take on a 2xlarge",
        STOCK_IMAGE,
    ),
    "baked": BootPath(
        60.0,
        0.25,
        "baked image: EC2 start (~15 s), kernel + cloud-init (~25 s), agent start checked 20 s; "
        "about 1 min (45-75 s), one boot, no installs",
        "1.0.0/1",  # a pipeline build version: the scaler's baked bootstrap timeout applies
    ),
}

# An interruption notice comes two minutes before EC2 reclaims the instance; the
# watcher cancels the running jobs 30 s before that (docs/spot.md), and the agent's
# exit then powers the instance off.
SPOT_NOTICE_SECONDS = 120.0
SPOT_CANCEL_SECONDS = SPOT_NOTICE_SECONDS - 30.0
# The pipeline rule of docs/spot.md: `retry: automatic` on `signal_reason: agent_stop`, limit 2.
RETRY_LIMIT = 2

# Warm pool timings. Assumptions, not measurements of this fleet (`--set` replaces them).
# A start runs the per-boot path only on a volume already read: EC2's start from
# stopped and the kernel (RunsOn quotes "under 15 s" from its pool of stopped
# instances against "under 25 s" cold; Depot 5 s against 40 s), the bootstrap's
# SSM reads and agent config (~5 s), and the agent checked for AGENT_CHECK_SECONDS:
# 40 s, against 60 s for a baked cold boot and 420 s for a stock one.
POOL_START_SECONDS = 40.0
# A pool instance's first boot, after the boot path's own time: `warm_volume` reads
# every file of the root volume once (lazily loaded snapshot blocks; a few GiB of
# Ubuntu, Nix and the agent), then it tags itself pooled and calls StopInstances.
POOL_WARM_SECONDS = 120.0
# StopInstances to `stopped`: the OS shuts down. Billed as a volume only meanwhile.
STOP_SECONDS = 30.0

RUNNING = "running"
STOPPING = "stopping"
STOPPED = "stopped"


@dataclass(frozen=True)
class SpotMarket:
    """One queue's spot market, as assumptions (README: "Spot"); used by spot queues only.

    discount: off the on-demand price. AWS's Spot Instance Advisor lists, per type
    and region, the savings over on-demand averaged over the last 30 days; for the
    c7i and c7g 2xlarge families in us-east-1 it has shown roughly 55-70 % (written
    down by hand, not fetched): 0.6 by default.
    interruptions_per_hour: a Poisson rate per spot instance-hour. The Advisor
    gives each type a band of "the rate at which Spot has reclaimed capacity during
    the trailing month": <5 %, 5-10 %, 10-15 %, 15-20 %, >20 %; these families are
    usually in the lowest one or two. Read pessimistically, as the share of
    instances reclaimed within one six-hour life (the template's max uptime) instead
    of within a month: 6 % per 6 h = 0.01 per instance-hour, the middle of 5-10 %.
    unavailable_share: the chance a spot RunInstances finds no capacity
    (InsufficientInstanceCapacity): 0 by default, to try the on-demand fallback.
    """

    discount: float = 0.6
    interruptions_per_hour: float = 0.01
    unavailable_share: float = 0.0


@dataclass(frozen=True)
class WorldSettings:
    boot_seconds: float = BOOT_PATHS["stock"].seconds
    boot_jitter: float = BOOT_PATHS["stock"].jitter
    connect_delay: float = 5.0  # ready-at → agents visible in the metrics
    failure_share: float = 0.04  # of launches: half hang, half report failed
    seed: int = 7
    boot_path: str = "stock"  # which image the instances boot: its tag decides the bootstrap timeout
    spot: Mapping[str, SpotMarket] = field(default_factory=dict)  # per queue; SpotMarket() when absent
    pool_start_seconds: float = POOL_START_SECONDS
    pool_warm_seconds: float = POOL_WARM_SECONDS
    stop_seconds: float = STOP_SECONDS

    def spot_market(self, queue: str) -> SpotMarket:
        return self.spot.get(queue, SpotMarket())


@dataclass
class SimJob:
    job: Job
    state: str = "pending"  # pending (not yet created), waiting, scheduled, running, done
    ready_at: float | None = None  # when it became runnable
    started_at: float | None = None
    finished_at: float | None = None
    instance_id: str = ""
    runs: int = 0
    retries: int = 0  # runs cancelled by a spot interruption (or a reaped instance) and run again
    waited: float = 0.0  # waits of the runs before the last
    lost_seconds: float = 0.0  # time the cancelled runs had run

    @property
    def started(self) -> bool:
        """Its last run started (and is running or over)."""
        return self.state in ("running", "done", "failed")

    def wait_at(self, end: float) -> float:
        """Every run's wait from ready to started; a run not started yet waits until `end`."""
        ready = self.job.scheduled_at if self.ready_at is None else self.ready_at
        started = self.started_at if self.started and self.started_at is not None else end
        return self.waited + started - ready


@dataclass
class SimInstance:
    instance_id: str
    queue: str
    role: str
    instance_type: str
    agents_per_instance: int
    idle_timeout: float | None  # None: floor instances never idle out
    max_uptime: float | None
    launched_at: float
    fate: str  # ok, hang, fail
    boot_seconds: float
    market: str = ON_DEMAND
    image: str = ""  # IMAGE_TAG as the scaler set it
    bootstrap: str = BOOTSTRAP_PENDING
    root_mode: str = "ebs"  # BK_ROOT_MODE of its user-data: whether `release` may stop it
    state: str = RUNNING  # or STOPPING, STOPPED; ended_at says terminated
    on_exit: str = ""  # the scaler's on-exit tag
    started_at: float = 0.0  # its launch, or its last start from the pool
    starts: int = 0  # starts from the pool
    cycle: int = 0  # one per launch or start: a timer of an earlier cycle finds it changed
    run_seconds: float = 0.0  # running time of the cycles before this one
    stopped_since: float = 0.0
    stopped_seconds: float = 0.0  # stopped (or stopping) time of earlier stops
    interrupted_at: float | None = None  # when the spot interruption notice came
    dropped: int = 0  # jobs it was running when the reaper terminated it
    ready_at: float | None = None
    connected_at: float | None = None
    ended_at: float | None = None
    reaped: bool = False
    exiting: bool = False  # max uptime reached: agents leave after their job
    idle_epoch: int = 0
    busy: list[SimJob] = field(default_factory=list)
    idle_agent_seconds: float = 0.0
    accounted_until: float = 0.0

    @property
    def live(self) -> bool:
        """Running: billed as an instance (a stopped pool instance is not)."""
        return self.ended_at is None and self.state == RUNNING

    @property
    def exists(self) -> bool:
        return self.ended_at is None

    def running_seconds(self, end: float) -> float:
        return self.run_seconds + (end - self.started_at if self.live else 0.0)

    def volume_only_seconds(self, end: float) -> float:
        """Stopping or stopped: only its volume is billed."""
        current = end - self.stopped_since if self.exists and self.state != RUNNING else 0.0
        return self.stopped_seconds + current

    @property
    def connected(self) -> bool:
        return self.connected_at is not None and self.live

    def free_agents(self) -> int:
        return self.agents_per_instance - len(self.busy) if self.connected and not self.exiting else 0

    def account(self, now: float) -> None:
        """Add up idle agent-seconds until `now`; called before every change of busy or connected."""
        self.idle_agent_seconds += self.free_agents() * (now - self.accounted_until)
        self.accounted_until = now


CloudListener = Callable[[str, SimInstance], None]


class World:
    def __init__(
        self, jobs: list[Job], start: datetime, settings: WorldSettings, pauses: tuple[Pause, ...] = ()
    ) -> None:
        self.start = start
        self.pauses = pauses
        self.settings = settings
        self.now = 0.0
        self.jobs = {job.job_id: SimJob(job) for job in jobs}
        self.instances: dict[str, SimInstance] = {}
        self.launch_count = 0
        self.peak_live: dict[str, int] = {}
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = itertools.count()
        # One random stream per queue: a change to one queue leaves the others' draws alone.
        self._rngs: dict[str, random.Random] = {}
        self._dependents: dict[str, list[SimJob]] = {}
        self._listeners: list[CloudListener] = []
        # Indexes, so a week's trace does not scan every job at every poll.
        self._counts: dict[str, dict[str, int]] = {}
        self._ready: dict[str, list[tuple[float, str, SimJob]]] = {}
        self._live: dict[str, dict[str, SimInstance]] = {}
        for sim in self.jobs.values():
            for dependency in sim.job.waits_on:
                self._dependents.setdefault(dependency, []).append(sim)
            self.schedule(sim.job.scheduled_at, lambda sim=sim: self._arrive(sim))
        for pause in pauses:
            # Resumed: what waited is dispatched to the agents that are free.
            self.schedule(pause.end, lambda queue=pause.queue: self._dispatch(queue))

    # -- time ---------------------------------------------------------------

    def time(self, seconds: float | None = None) -> datetime:
        return self.start + timedelta(seconds=self.now if seconds is None else seconds)

    def advance_to(self, until: float) -> None:
        while self._events and self._events[0][0] <= until:
            when, _, action = heapq.heappop(self._events)
            self.now = max(self.now, when)
            action()
        self.now = max(self.now, until)

    def schedule(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (when, next(self._sequence), action))

    def on_change(self, listener: CloudListener) -> None:
        """Tell `listener(what, instance)` when an instance tags itself, stops or ends."""
        self._listeners.append(listener)

    def _notify(self, what: str, instance: SimInstance) -> None:
        for listener in self._listeners:
            listener(what, instance)

    # -- Buildkite's view -----------------------------------------------------

    def queue_counts(self, queue: str) -> dict[str, int]:
        jobs = self._counts.get(queue, {})
        counts = {state: jobs.get(state, 0) for state in ("scheduled", "running", "waiting")}
        counts.update(idle=0, busy=0)
        for instance in self._live.get(queue, {}).values():
            if instance.connected:
                counts["busy"] += len(instance.busy)
                # After an interruption notice its idle agents have stopped (SIGTERM).
                if instance.interrupted_at is None:
                    counts["idle"] += instance.agents_per_instance - len(instance.busy)
        counts["total"] = counts["idle"] + counts["busy"]
        return counts

    def paused(self, queue: str) -> bool:
        return any(pause.covers(queue, self.now) for pause in self.pauses)

    def scheduled(self, queue: str, limit: int) -> list[SimJob]:
        """The queue's scheduled jobs, the oldest first: what the Stacks API lists."""
        return [entry[2] for entry in heapq.nsmallest(limit, self._ready.get(queue, []))]

    def live_count(self, queue: str) -> int:
        return len(self._live.get(queue, {}))

    def unfinished_jobs(self) -> int:
        return len(self.jobs) - sum(counts.get("done", 0) for counts in self._counts.values())

    def spot_refused(self, queue: str) -> bool:
        """Whether a spot RunInstances for `queue` finds no capacity, drawn from the queue's spot stream."""
        share = self.settings.spot_market(queue).unavailable_share
        return share > 0 and self._spot_rng(queue).random() < share

    def _rng(self, queue: str) -> random.Random:
        return self._rngs.setdefault(queue, random.Random(f"{self.settings.seed}/{queue}"))

    def _spot_rng(self, queue: str) -> random.Random:
        # Apart from the boot stream, so spot settings leave boot times and fates alone.
        return self._rngs.setdefault(f"{queue}/spot", random.Random(f"{self.settings.seed}/{queue}/spot"))

    def _set_state(self, sim: SimJob, state: str) -> None:
        counts = self._counts.setdefault(sim.job.queue, {})
        if sim.state != "pending":
            counts[sim.state] -= 1
        counts[state] = counts.get(state, 0) + 1
        sim.state = state

    # -- EC2's view -----------------------------------------------------------

    def launch(
        self,
        instance_id: str,
        queue: str,
        role: str,
        instance_type: str,
        agents_per_instance: int,
        idle_timeout: float | None,
        max_uptime: float | None,
        market: str = ON_DEMAND,
        image: str = "",
        root_mode: str = "ebs",
    ) -> SimInstance:
        settings = self.settings
        # Drawn in launch order, so two runs making the same decisions get the same fates.
        rng = self._rng(queue)
        fate = _fate(rng.random(), settings.failure_share)
        boot = settings.boot_seconds * rng.uniform(1 - settings.boot_jitter, 1 + settings.boot_jitter)
        instance = SimInstance(
            instance_id,
            queue,
            role,
            instance_type,
            agents_per_instance,
            idle_timeout,
            max_uptime,
            self.now,
            fate,
            boot,
            market,
            image,
            # As Ec2Fleet tags a launch: a pool instance's first boot is no capacity.
            bootstrap=BOOTSTRAP_WARMING if role == ROLE_POOL else BOOTSTRAP_PENDING,
            root_mode=root_mode,
            started_at=self.now,
        )
        self.instances[instance_id] = instance
        self.launch_count += 1
        self._boot(instance)
        rate = settings.spot_market(queue).interruptions_per_hour
        if market == SPOT and rate > 0:
            notice = self.now + self._spot_rng(queue).expovariate(rate / 3600)
            self._at(instance, notice, lambda: self._interrupt(instance))
        return instance

    def start_instance(self, instance_id: str) -> None:
        """StartInstances on a stopped pool instance (the scaler tagged it pending first).

        It boots the per-boot path only: `pool_start_seconds`, with the boot jitter. Its
        fate and time are drawn from the queue's own pool stream, so starts leave the
        launches' draws alone.
        """
        instance = self.instances[instance_id]
        if instance.state != STOPPED or not instance.exists:
            raise ValueError(f"{instance_id} is {instance.state if instance.exists else 'terminated'}, not stopped")
        settings = self.settings
        rng = self._rngs.setdefault(f"{instance.queue}/pool", random.Random(f"{settings.seed}/{instance.queue}/pool"))
        instance.fate = _fate(rng.random(), settings.failure_share)
        jitter = rng.uniform(1 - settings.boot_jitter, 1 + settings.boot_jitter)
        instance.boot_seconds = settings.pool_start_seconds * jitter
        instance.stopped_seconds += self.now - instance.stopped_since
        instance.state = RUNNING
        instance.started_at = self.now
        instance.starts += 1
        instance.exiting = False
        instance.connected_at = None
        self._boot(instance)

    def terminate(self, instance_id: str) -> None:
        """The reaper's TerminateInstances."""
        instance = self.instances[instance_id]
        if not instance.exists:
            return
        if not instance.live:
            # A stopped (or stopping) pool instance: no agent, nothing to lose.
            instance.stopped_seconds += self.now - instance.stopped_since
            instance.state = STOPPED
            instance.reaped = True
            instance.ended_at = self.now
            self._notify("ended", instance)
            return
        # The reaper only terminates instances whose bootstrap never completed; their
        # agents connect AGENT_CHECK_SECONDS before, so a timeout inside that window can
        # catch jobs: they are lost (`exit_status: -1`) and retried, and the run warns.
        instance.dropped += len(instance.busy)
        self._cancel_jobs(instance)
        instance.reaped = True
        self._end(instance)

    # -- instance life --------------------------------------------------------

    def _at(self, instance: SimInstance, when: float, action: Callable[[], None]) -> None:
        """`action` at `when`, unless the instance stopped, ended or restarted meanwhile."""
        cycle = instance.cycle
        self.schedule(when, lambda: action() if instance.live and instance.cycle == cycle else None)

    def _boot(self, instance: SimInstance) -> None:
        """A launch or a start: the instance runs, and boots for `instance.boot_seconds`."""
        instance.cycle += 1
        self._live.setdefault(instance.queue, {})[instance.instance_id] = instance
        self.peak_live[instance.queue] = max(self.peak_live.get(instance.queue, 0), self.live_count(instance.queue))
        boot = instance.boot_seconds
        if instance.fate == "ok" and instance.bootstrap != BOOTSTRAP_WARMING:
            # The bootstrap starts the agent, checks it for AGENT_CHECK_SECONDS, then tags
            # itself: the agents connect before ready-at, as on a real instance.
            started = self.now + max(boot - AGENT_CHECK_SECONDS, 0.0)
            self._at(instance, started + self.settings.connect_delay, lambda: self._connect(instance))
        if instance.fate != "hang":
            self._at(instance, self.now + boot, lambda: self._boot_done(instance))

    def _boot_done(self, instance: SimInstance) -> None:
        if instance.fate == "fail":
            instance.bootstrap = BOOTSTRAP_FAILED
            self._notify("tagged", instance)
            self._end(instance)  # the user-data powers off after tagging failed
            return
        if instance.bootstrap == BOOTSTRAP_WARMING:
            # `park`: read the volume once, tag pooled, stop.
            self._at(instance, self.now + self.settings.pool_warm_seconds, lambda: self._stop_into_pool(instance))
            return
        instance.bootstrap = BOOTSTRAP_COMPLETE
        instance.ready_at = self.now
        self._notify("tagged", instance)

    def _stop_into_pool(self, instance: SimInstance) -> None:
        """`stop_into_pool`: tag pooled, StopInstances; the instance bills its volume only."""
        instance.account(self.now)
        instance.bootstrap = BOOTSTRAP_POOLED
        self._notify("tagged", instance)
        instance.run_seconds += self.now - instance.started_at
        instance.state = STOPPING
        instance.stopped_since = self.now
        instance.connected_at = None
        del self._live[instance.queue][instance.instance_id]
        cycle = instance.cycle
        self.schedule(self.now + self.settings.stop_seconds, lambda: self._stopped(instance, cycle))

    def _stopped(self, instance: SimInstance, cycle: int) -> None:
        if instance.exists and instance.cycle == cycle and instance.state == STOPPING:
            instance.state = STOPPED
            self._notify("stopped", instance)

    def _agent_exited(self, instance: SimInstance) -> None:
        """agent-exited.sh: `release` stops a pool instance back into the pool only with an
        overlayroot root (its next boot is clean) and the scaler's on-exit tag at stop;
        otherwise the instance powers off and terminates."""
        if instance.role == ROLE_POOL and instance.root_mode == "overlayroot" and instance.on_exit == ON_EXIT_STOP:
            self._stop_into_pool(instance)
        else:
            self._end(instance)

    def _connect(self, instance: SimInstance) -> None:
        if instance.interrupted_at is not None:
            return  # after a notice the watcher stops an agent as soon as it starts
        instance.account(self.now)
        instance.connected_at = self.now
        if instance.max_uptime is not None:
            self._at(instance, self.now + instance.max_uptime, lambda: self._uptime_reached(instance))
        self._became_idle(instance)
        self._dispatch(instance.queue)

    def _uptime_reached(self, instance: SimInstance) -> None:
        instance.account(self.now)
        instance.exiting = True
        if not instance.busy:
            self._agent_exited(instance)

    def _interrupt(self, instance: SimInstance) -> None:
        """The two-minute notice: agents take no new job (SIGTERM); running jobs are
        cancelled 30 s before EC2 reclaims the instance, and the instance goes."""
        instance.account(self.now)
        instance.interrupted_at = self.now
        instance.exiting = True
        if instance.connected and not instance.busy:
            self._end(instance)  # an idle agent exits at once; its exit powers off
            return
        self._at(instance, self.now + SPOT_CANCEL_SECONDS, lambda: self._cancel_and_end(instance))
        self._at(instance, self.now + SPOT_NOTICE_SECONDS, lambda: self._end(instance))

    def _cancel_and_end(self, instance: SimInstance) -> None:
        self._cancel_jobs(instance)
        if instance.connected:
            self._end(instance)  # the agent exits after the cancel; its exit powers off

    def _cancel_jobs(self, instance: SimInstance) -> None:
        """Cancel every running job; each is retried up to RETRY_LIMIT times, then fails."""
        instance.account(self.now)
        for sim in list(instance.busy):
            instance.busy.remove(sim)
            started, ready = sim.started_at, sim.ready_at
            # A running job was ready and started.
            assert started is not None
            assert ready is not None
            sim.lost_seconds += self.now - started
            sim.waited += started - ready
            sim.retries += 1
            if sim.retries > RETRY_LIMIT:
                self._set_state(sim, "failed")
                sim.finished_at = self.now
            else:
                self._make_ready(sim)

    def _became_idle(self, instance: SimInstance) -> None:
        instance.idle_epoch += 1
        if instance.idle_timeout is None:
            return
        epoch = instance.idle_epoch
        self._at(instance, self.now + instance.idle_timeout, lambda: self._idle_check(instance, epoch))

    def _idle_check(self, instance: SimInstance, epoch: int) -> None:
        # With spawn=N the agent process exits once all N have idled this long.
        if not instance.busy and instance.idle_epoch == epoch:
            self._agent_exited(instance)

    def _end(self, instance: SimInstance) -> None:
        # The agent service stopped for good, a failed bootstrap powered off,
        # or the reaper terminated it: the instance is gone. Timers set
        # earlier (uptime, idle) may still fire; they find it ended.
        if not instance.live:
            return
        instance.account(self.now)
        instance.run_seconds += self.now - instance.started_at
        instance.ended_at = self.now
        del self._live[instance.queue][instance.instance_id]
        self._notify("ended", instance)

    # -- jobs -----------------------------------------------------------------

    def _arrive(self, sim: SimJob) -> None:
        if not self._runnable(sim):
            self._set_state(sim, "waiting")
            return
        self._make_ready(sim)

    def _runnable(self, sim: SimJob) -> bool:
        return all(self.jobs[dependency].state == "done" for dependency in sim.job.waits_on)

    def _make_ready(self, sim: SimJob) -> None:
        self._set_state(sim, "scheduled")
        sim.ready_at = self.now
        heapq.heappush(self._ready.setdefault(sim.job.queue, []), (self.now, sim.job.job_id, sim))
        self._dispatch(sim.job.queue)

    def _dispatch(self, queue: str) -> None:
        if self.paused(queue):
            return
        ready = self._ready.get(queue)
        for instance in list(self._live.get(queue, {}).values()):
            while ready and instance.free_agents() > 0:
                self._start(heapq.heappop(ready)[2], instance)
            if not ready:
                return

    def _start(self, sim: SimJob, instance: SimInstance) -> None:
        instance.account(self.now)
        self._set_state(sim, "running")
        sim.started_at = self.now
        sim.instance_id = instance.instance_id
        sim.runs += 1
        instance.busy.append(sim)
        instance.idle_epoch += 1
        run = sim.runs
        self.schedule(self.now + sim.job.duration, lambda: self._finish(sim, instance, run))

    def _finish(self, sim: SimJob, instance: SimInstance, run: int) -> None:
        if sim.runs != run or sim.state != "running":
            return  # that run was cancelled
        self._set_state(sim, "done")
        sim.finished_at = self.now
        instance.account(self.now)
        instance.busy.remove(sim)
        for dependent in self._dependents.get(sim.job.job_id, []):
            if dependent.state == "waiting" and self._runnable(dependent):
                self._make_ready(dependent)
        if instance.exiting and not instance.busy:
            self._agent_exited(instance)
            return
        if not instance.busy:
            self._became_idle(instance)
        self._dispatch(instance.queue)


def _fate(roll: float, failure_share: float) -> str:
    """ok, or of the failures half hang and half report failed."""
    return "ok" if roll >= failure_share else ("hang" if roll < failure_share / 2 else "fail")
