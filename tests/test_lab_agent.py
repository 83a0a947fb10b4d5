"""The lab's stand-in buildkite-agent keeps the real agent's contract: run as a process
against the lab's agent API on loopback, as the VM runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab.agent_api import AgentApi, AgentApiServer

AGENT = Path(__file__).resolve().parent.parent / "lab" / "guest" / "buildkite-agent.py"
TOKEN = "reg-token"


@pytest.fixture
def api() -> Iterator[tuple[AgentApi, str]]:
    fake = AgentApi(TOKEN)
    with AgentApiServer(fake) as server:
        yield fake, server.endpoint


def config(tmp_path: Path, endpoint: str, *extra: str) -> Path:
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    path = tmp_path / "buildkite-agent.cfg"
    lines = [
        f'token="{TOKEN}"',
        f'endpoint="{endpoint}"',
        'name="lab-%spawn"',
        'tags="queue=lab-x86,arch=x86_64"',
        f'build-path="{tmp_path / "builds"}"',
        f'hooks-path="{hooks}"',
        *extra,
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def start(path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "LAB_AGENT_PING_SECONDS": "0.1"}
    return subprocess.Popen(
        [sys.executable, str(AGENT), "start", "--config", str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_to_exit(path: Path) -> tuple[int, str]:
    process = start(path)
    output, _ = process.communicate(timeout=30)
    return process.returncode, output


def test_version_reads_as_the_bootstrap_expects() -> None:
    output = subprocess.run([sys.executable, str(AGENT), "--version"], capture_output=True, text=True, check=True)
    assert output.stdout.startswith("buildkite-agent version 3.")


def test_an_unknown_config_key_is_refused(tmp_path: Path, api: tuple[AgentApi, str]) -> None:
    code, output = run_to_exit(config(tmp_path, api[1], "cancel-signal-timeout=10"))
    assert (code, "unknown key 'cancel-signal-timeout'" in output) == (1, True)


def test_an_unknown_flag_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(AGENT), "start", "--no-such-flag"], capture_output=True, text=True, check=False
    )
    assert (result.returncode, "flag provided but not defined" in result.stdout) == (1, True)


def test_the_packages_placeholder_token_is_refused(tmp_path: Path, api: tuple[AgentApi, str]) -> None:
    path = config(tmp_path, api[1])
    path.write_text(path.read_text().replace(TOKEN, "xxx"))
    assert run_to_exit(path)[0] == 1


def test_a_wrong_token_fails_the_agent(tmp_path: Path, api: tuple[AgentApi, str]) -> None:
    path = config(tmp_path, api[1])
    path.write_text(path.read_text().replace(TOKEN, "wrong"))
    assert run_to_exit(path)[0] == 1


def test_it_runs_a_job_then_idles_out_with_exit_0(tmp_path: Path, api: tuple[AgentApi, str]) -> None:
    fake, endpoint = api
    job = fake.schedule("lab-x86", "echo built in $PWD")
    code, _ = run_to_exit(config(tmp_path, endpoint, "disconnect-after-idle-timeout=1"))
    assert (code, job.exit_status, "built in" in job.log) == (0, 0, True)


def test_the_environment_hook_can_refuse_a_job(tmp_path: Path, api: tuple[AgentApi, str]) -> None:
    fake, endpoint = api
    path = config(tmp_path, endpoint, "disconnect-after-idle-timeout=1")
    (tmp_path / "hooks" / "environment").write_text("echo refused by the hook\nexit 75\n")
    job = fake.schedule("lab-x86", "echo must not run")
    run_to_exit(path)
    assert (job.exit_status, "must not run" in job.log) == (75, False)


def test_one_sigterm_finishes_the_running_job(tmp_path: Path, api: tuple[AgentApi, str]) -> None:
    fake, endpoint = api
    job = fake.schedule("lab-x86", "sleep 1; echo finished")
    process = start(config(tmp_path, endpoint))
    assert fake.wait_for_state(job, "running", 20), f"job stayed {job.state}"
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    assert (process.returncode, job.exit_status, job.signal_reason) == (0, 0, None)


def test_two_sigterms_cancel_the_running_job(tmp_path: Path, api: tuple[AgentApi, str]) -> None:
    fake, endpoint = api
    job = fake.schedule("lab-x86", "sleep 30")
    process = start(config(tmp_path, endpoint))
    assert fake.wait_for_state(job, "running", 20), f"job stayed {job.state}"
    process.send_signal(signal.SIGTERM)
    # Two signals at once may arrive as one: the second goes once the first is handled.
    assert process.stdout is not None
    while "received SIGTERM" not in process.stdout.readline():
        pass
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    assert (process.returncode, job.signal_reason) == (0, "agent_stop")


def test_with_spawn_2_the_idle_timeout_waits_for_both_agents(tmp_path: Path, api: tuple[AgentApi, str]) -> None:
    fake, endpoint = api
    job = fake.schedule("lab-x86", "sleep 2")
    code, _ = run_to_exit(config(tmp_path, endpoint, "spawn=2", "disconnect-after-idle-timeout=1"))
    assert (code, job.exit_status) == (0, 0)
