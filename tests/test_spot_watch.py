"""The spot interruption watcher, run for real under bash against a fake metadata service.

The metadata service is a loopback HTTP server that answers like IMDSv2
(a session token first, 404 while there is no event); systemctl and aws are
stubs that log their calls with the time, so a test can see which signal
reached the agent, how often and when.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Condition, Thread

import pytest
from tests.support.instance import X86_QUEUE, install_user_data, make_settings

from autoscaler.userdata import render_user_data

SCRIPT = "usr/local/lib/buildkite-bootstrap/spot-interruption-watch.sh"
TERM = ["systemctl", "kill", "--kill-whom=main", "--signal=SIGTERM", "buildkite-agent.service"]
QUIT = ["systemctl", "kill", "--kill-whom=main", "--signal=SIGQUIT", "buildkite-agent.service"]
REAL_COMMANDS = ("bash", "curl", "date", "sleep", "mkdir", "touch", "sed", "env", "stat")
# Logs "time<US>argv..."; `systemctl is-active` answers from a file the test controls. Like
# botocore, `aws` runs the credential_process of $HOME/.aws/config.
STUB = r"""#!/bin/bash
# The watcher starts again from a clean environment: the stub's settings are in a file too.
if [[ -z "${STUB_LOG:-}" ]]; then
    . "@STUB_DIR@/stub.env"
fi
if [[ "${0##*/}" == aws && -f "${HOME:-/nonexistent}/.aws/config" ]]; then
    $(sed -n 's/^credential_process *= *//p' "$HOME/.aws/config")
fi
# One write per call: the watcher counts in the background, stubs run at the same time.
line=$(printf '%s\x1f' "$(date +%s.%N)" "${0##*/}" "$@")
printf '%s\n' "$line" >>"$STUB_LOG"
if [[ "${0##*/}" == aws && -n "${STUB_AWS_HANG:-}" ]]; then
    sleep "$STUB_AWS_HANG"
fi
if [[ "${0##*/} $1" == "systemctl is-active" ]]; then
    [[ -e "$STUB_AGENT_ACTIVE" ]]
fi
"""


@dataclass
class FakeImds:
    """What the instance metadata says, served on loopback like IMDSv2."""

    lifecycle: str = "spot"
    rebalance: dict[str, str] | None = None
    action: dict[str, str] | None = None
    polls: list[str] = field(default_factory=list)
    polled: Condition = field(default_factory=Condition)
    headers: list[str] = field(default_factory=list)

    def wait_for_polls(self, path: str, count: int, seconds: float = 20) -> bool:
        """Until `path` was asked `count` times: an event, however loaded the machine."""
        with self.polled:
            return self.polled.wait_for(lambda: self.polls.count(path) >= count, timeout=seconds)

    def document(self, path: str) -> str | None:
        return {
            "/latest/meta-data/instance-life-cycle": self.lifecycle,
            "/latest/meta-data/events/recommendations/rebalance": self.rebalance and json.dumps(self.rebalance),
            "/latest/meta-data/spot/instance-action": self.action and json.dumps(self.action),
        }.get(path)


def serve(imds: FakeImds) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            self.reply(200 if ok else 400, "session-token")

        def do_GET(self) -> None:
            imds.headers.extend(self.headers.keys())
            if self.headers.get("X-aws-ec2-metadata-token") != "session-token":
                self.reply(401, "")
                return
            with imds.polled:
                imds.polls.append(self.path)
                imds.polled.notify_all()
            document = imds.document(self.path)
            self.reply(404 if document is None else 200, document or "")

        def reply(self, status: int, body: str) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Instance:
    root: Path
    imds: FakeImds
    env: dict[str, str]
    process: subprocess.Popen[str] | None = None

    def write_stub_settings(self) -> None:
        """The stubs' settings where they find them once a script has cleaned its environment."""
        settings = [
            f"export {name}={shlex.quote(value)}" for name, value in self.env.items() if name.startswith("STUB_")
        ]
        (Path(self.env["STUB_LOG"]).parent / "stub.env").write_text("\n".join(settings) + "\n")

    def start(self) -> None:
        self.write_stub_settings()
        script = self.root / SCRIPT
        self.process = subprocess.Popen(
            ["/bin/bash", str(script)], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def wait(self, seconds: float) -> int | None:
        """The exit code, or None if it is still watching after `seconds`."""
        assert self.process is not None
        try:
            return self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return None

    def calls(self) -> list[tuple[float, list[str]]]:
        log = Path(self.env["STUB_LOG"])
        if not log.exists():
            return []
        rows = [line.split("\x1f")[:-1] for line in log.read_text().splitlines()]
        return [(float(row[0]), row[1:]) for row in rows]

    def signals(self) -> list[tuple[float, list[str]]]:
        return [(at, call) for at, call in self.calls() if call[:2] == ["systemctl", "kill"]]

    def counted(self) -> list[str]:
        return [call[call.index("--metric-name") + 1] for _, call in self.calls() if call[0] == "aws"]

    def agent_running(self, running: bool) -> None:
        flag = Path(self.env["STUB_AGENT_ACTIVE"])
        if running:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[Instance]:
    root = tmp_path / "root"
    install_user_data(root, render_user_data(make_settings(), X86_QUEUE, "burst", "ci-fleet"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = tmp_path / "stub"
    stub.write_text(STUB.replace("@STUB_DIR@", str(tmp_path)))
    stub.chmod(0o755)
    for name in ("systemctl", "aws"):
        (bin_dir / name).symlink_to(stub)
    for name in REAL_COMMANDS:
        (bin_dir / name).symlink_to(shutil.which(name, path="/usr/bin:/bin"))
    imds = FakeImds()
    server = serve(imds)
    env = {
        "PATH": str(bin_dir),
        "LC_ALL": "C",
        "BOOTSTRAP_ROOT": str(root),
        "STUB_LOG": str(tmp_path / "calls.log"),
        "STUB_AGENT_ACTIVE": str(tmp_path / "agent-active"),
        "SPOT_WATCH_IMDS": f"http://127.0.0.1:{server.server_address[1]}",
        "SPOT_WATCH_INTERVAL": "0.1",
        "SPOT_WATCH_CANCEL_MARGIN": "2",
    }
    running = Instance(root, imds, env)
    running.write_stub_settings()
    running.agent_running(True)
    yield running
    if running.process and running.process.poll() is None:
        running.process.kill()
        running.process.wait()
    server.shutdown()


def notice_in(seconds: int) -> tuple[float, dict[str, str]]:
    at = int(time.time()) + seconds
    return at, {"action": "terminate", "time": datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def test_no_notice_sends_nothing(instance: Instance) -> None:
    instance.start()

    assert instance.imds.wait_for_polls("/latest/meta-data/spot/instance-action", 3)
    assert instance.wait(0) is None
    assert instance.calls() == []


def test_the_console_gets_no_line_while_nothing_happens(instance: Instance) -> None:
    # IMDS answers 404 until an event; EC2 keeps only the console's last 64 KiB.
    instance.start()
    assert instance.imds.wait_for_polls("/latest/meta-data/spot/instance-action", 3)
    assert instance.process is not None
    instance.process.terminate()
    output, _ = instance.process.communicate(timeout=5)

    assert output.splitlines() == [
        "spot-interruption-watch: watching for rebalance recommendations and interruption notices"
    ]


def test_a_job_planted_aws_config_or_curlrc_never_runs_as_root(instance: Instance, tmp_path: Path) -> None:
    home = tmp_path / "agent-home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws/config").write_text(f"[default]\ncredential_process = touch {tmp_path / 'ran'}\n")
    (home / ".curlrc").write_text('header = "X-Planted: by-a-job"\n')
    instance.env["HOME"] = str(home)
    instance.imds.rebalance = {"noticeTime": "2026-11-26T07:00:00Z"}
    instance.start()

    assert instance.wait(1.5) is None
    assert instance.counted() == ["RebalanceRecommendations"]
    assert instance.imds.polls
    assert "X-Planted" not in instance.imds.headers
    assert not (tmp_path / "ran").exists()


def test_after_the_build_space_hook_drained_the_agent_a_spot_notice_sends_no_second_sigterm(
    instance: Instance,
) -> None:
    hook_marker = instance.root / "run/buildkite-agent-drain/signalled"
    hook_marker.parent.mkdir(parents=True)
    hook_marker.write_text("build-space\n")
    instance.imds.action = notice_in(3)[1]
    instance.start()

    assert instance.wait(8) == 0
    assert [call for _, call in instance.signals()] == [QUIT]
    assert instance.process is not None
    output = instance.process.communicate()[0]
    assert output.count("the agent is draining already (build-space): no second SIGTERM") == 1


def test_a_rebalance_recommendation_stops_new_jobs_once_and_is_counted(instance: Instance) -> None:
    instance.imds.rebalance = {"noticeTime": "2026-11-26T07:00:00Z"}
    instance.start()

    assert instance.wait(1.5) is None
    assert [call for _, call in instance.signals()] == [TERM]
    assert instance.counted() == ["RebalanceRecommendations"]
    aws = next(call for _, call in instance.calls() if call[0] == "aws")
    assert aws[aws.index("--namespace") + 1] == "BuildkiteAutoscaler/Spot"
    assert aws[aws.index("--dimensions") + 1] == "fleet=ci-fleet,queue=nixos-x86-aws"


def test_a_notice_sends_one_sigterm_then_cancels_before_the_termination_time(instance: Instance) -> None:
    terminated_at, instance.imds.action = notice_in(4)
    instance.start()

    assert instance.wait(8) == 0
    (term_at, term), (quit_at, quit_) = instance.signals()
    assert (term, quit_) == (TERM, QUIT)
    assert term_at < terminated_at - 2
    # The cancel margin (2 s here) before the termination time, not later.
    assert terminated_at - 2 <= quit_at < terminated_at
    assert instance.counted() == ["InterruptionNotices"]
    assert (instance.root / "run/buildkite-spot-watch/reclaimed").exists()


def test_a_cloudwatch_that_does_not_answer_holds_back_neither_drain_nor_cancel(instance: Instance) -> None:
    instance.env["STUB_AWS_HANG"] = "12"
    started = time.time()
    terminated_at, instance.imds.action = notice_in(4)
    instance.start()

    assert instance.wait(8) == 0
    (term_at, term), (quit_at, quit_) = instance.signals()
    assert (term, quit_) == (TERM, QUIT)
    assert term_at < started + 2
    assert quit_at < terminated_at
    assert instance.counted() == ["InterruptionNotices"]


def test_after_a_rebalance_the_notice_does_not_send_a_second_sigterm(instance: Instance) -> None:
    instance.imds.rebalance = {"noticeTime": "2026-11-26T07:00:00Z"}
    instance.start()
    assert instance.wait(0.8) is None
    instance.imds.action = notice_in(3)[1]

    assert instance.wait(8) == 0
    assert [call for _, call in instance.signals()] == [TERM, QUIT]
    assert instance.counted() == ["RebalanceRecommendations", "InterruptionNotices"]


def test_signals_wait_for_the_agent_to_run(instance: Instance) -> None:
    instance.agent_running(False)
    instance.imds.rebalance = {"noticeTime": "2026-11-26T07:00:00Z"}
    instance.start()
    assert instance.wait(0.8) is None
    assert instance.signals() == []

    instance.agent_running(True)

    assert instance.wait(0.8) is None
    assert [call for _, call in instance.signals()] == [TERM]
    assert instance.counted() == ["RebalanceRecommendations"]


def test_an_on_demand_instance_watches_nothing(instance: Instance) -> None:
    instance.imds.lifecycle = "on-demand"
    instance.imds.action = notice_in(100)[1]
    instance.start()

    assert instance.wait(3) == 0
    assert instance.calls() == []


@pytest.mark.parametrize("result", ["success", "exit-code", "signal"])
def test_after_an_interruption_notice_any_agent_exit_powers_off(instance: Instance, result: str) -> None:
    (instance.root / "run/buildkite-spot-watch").mkdir(parents=True)
    (instance.root / "run/buildkite-spot-watch/reclaimed").touch()
    script = instance.root / "usr/local/lib/buildkite-bootstrap/agent-exited.sh"

    subprocess.run(["/bin/bash", str(script)], env={**instance.env, "SERVICE_RESULT": result}, check=True)

    assert [call for _, call in instance.calls()] == [["systemctl", "--no-block", "poweroff"]]
