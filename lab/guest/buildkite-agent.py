#!/usr/bin/python3
"""A stand-in for buildkite-agent v3 that keeps the contract the instance scripts rely on.

`buildkite-agent --version`, and `buildkite-agent start`: it reads the config
file (refusing keys and flags v3 does not know, as the real agent does),
registers each spawned agent with the token it was given, connects, pings,
runs jobs (the `environment` hook, then the command, as this user), and
exits 0 when every agent has been idle for `disconnect-after-idle-timeout`
or has been up for `disconnect-after-uptime`. SIGTERM once: take no more
jobs, finish the running ones, exit 0. Twice: cancel them (signal_reason
agent_stop). Three times: exit 1 at once. Standard library only: it runs
in the lab's guest, whose API endpoint (a guestfwd to the host's fake) is
its built-in default, as agent.buildkite.com is the real one's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

VERSION = "buildkite-agent version 3.138.0, build 9999"
DEFAULT_ENDPOINT = "http://169.254.0.11/v3"
DEFAULT_CONFIG = "/etc/buildkite-agent/buildkite-agent.cfg"
# The package's config ships with this token: an agent started from it must fail.
PLACEHOLDER_TOKEN = "xxx"  # noqa: S105 - a placeholder
# The real agent pings every few seconds; the lab's own tests ask for less.
PING_SECONDS = float(os.environ.get("LAB_AGENT_PING_SECONDS", "5"))
# The v3 keys (also its flags, as --key=value); anything else is an error.
KNOWN_KEYS = {
    "token",
    "name",
    "priority",
    "spawn",
    "tags",
    "tags-from-ec2-meta-data",
    "tags-from-ec2-tags",
    "tags-from-host",
    "build-path",
    "hooks-path",
    "plugins-path",
    "sockets-path",
    "endpoint",
    "disconnect-after-idle-timeout",
    "disconnect-after-job",
    "disconnect-after-uptime",
    "cancel-grace-period",
    "signal-grace-period-seconds",
    "debug",
    "experiment",
    "git-clean-flags",
    "git-clone-flags",
    "no-command-eval",
    "no-plugins",
    "no-local-hooks",
    "shell",
    "queue",
    "acquire-job",
    "health-check-addr",
    "log-format",
    "config",
}
HOOK_AND_RUN = (
    'set -e\nif [ -f "$HOOK" ]; then . "$HOOK"; fi\nmkdir -p "$CHECKOUT"\ncd "$CHECKOUT"\neval "$BUILDKITE_COMMAND"\n'
)


def log(message: str) -> None:
    print(f"buildkite-agent: {message}", flush=True)


def parse_config(text: str) -> dict[str, str]:
    """key=value lines, # comments, values optionally double-quoted; unknown keys refused."""
    config = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or key not in KNOWN_KEYS:
            raise ValueError(f"config line {number}: unknown key {key!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        config[key] = value
    return config


def parse_flags(args: list[str]) -> dict[str, str]:
    """--key=value or --key value; a flag v3 does not know is an error."""
    flags, index = {}, 0
    while index < len(args):
        arg = args[index]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}")
        key, sep, value = arg[2:].partition("=")
        if key not in KNOWN_KEYS:
            raise ValueError(f"flag provided but not defined: -{key}")
        if not sep:
            index += 1
            value = args[index] if index < len(args) else "true"
        flags[key] = value
        index += 1
    return flags


class Api:
    def __init__(self, endpoint: str, token: str) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.endpoint + path, data=data, method=method)  # noqa: S310
        request.add_header("Authorization", f"Token {self.token}")
        request.add_header("Content-Type", "application/json")
        # The endpoint is http(s) from the config, as the real agent's is.
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            text = response.read().decode()
        return json.loads(text) if text else {}


class Agent:
    """The whole process: its spawned workers and the signals it got."""

    def __init__(self, config: dict[str, str]) -> None:
        self.config = config
        self.spawn = int(config.get("spawn", "1"))
        self.idle_timeout = int(config.get("disconnect-after-idle-timeout", "0"))
        self.uptime = int(config.get("disconnect-after-uptime", "0"))
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.signals = 0
        self.idle_since: dict[int, float | None] = {}  # worker → monotonic time it became idle, None while busy
        self.jobs: dict[int, subprocess.Popen[bytes]] = {}  # worker → running job process
        self.failure: Exception | None = None  # why a worker ended other than by disconnecting

    def stopping(self) -> bool:
        return self.signals >= 1

    def on_term(self, *_: object) -> None:
        with self.lock:
            self.signals += 1
            count = self.signals
        if count == 1:
            log("received SIGTERM: stopping gracefully after the running jobs finish")
        elif count == 2:
            log("received a second SIGTERM: cancelling the running jobs")
            for process in list(self.jobs.values()):
                os.killpg(process.pid, signal.SIGTERM)
        else:
            log("received a third signal: exiting at once")
            os._exit(1)

    def all_idle_for(self, seconds: int) -> bool:
        now = time.monotonic()
        with self.lock:
            marks = list(self.idle_since.values())
        return len(marks) == self.spawn and all(m is not None and now - m >= seconds for m in marks)

    def should_disconnect(self) -> str | None:
        if self.stopping():
            return "stopping"
        if self.uptime and time.monotonic() - self.started >= self.uptime:
            return f"uptime of {self.uptime}s reached"
        # With spawn > 1 the idle timeout fires only when every agent has been idle that long.
        if self.idle_timeout and self.all_idle_for(self.idle_timeout):
            return f"idle for {self.idle_timeout}s"
        return None

    def on_quit(self, *_: object) -> None:
        # SIGQUIT cancels at once, as a second SIGTERM does.
        with self.lock:
            self.signals = max(self.signals, 1)
        self.on_term()

    def guarded_worker(self, index: int, registration_api: Api) -> None:
        try:
            self.worker(index, registration_api)
        except (OSError, ValueError, KeyError) as error:
            self.failure = error
            log(f"agent {index} failed: {error}")

    def worker(self, index: int, registration_api: Api) -> None:
        name = self.config.get("name", "%hostname-%spawn").replace("%spawn", str(index))
        name = name.replace("%hostname", os.uname().nodename)
        tags = [t for t in self.config.get("tags", "").split(",") if t]
        registered = registration_api.call("POST", "/register", {"name": name, "tags": tags})
        api = Api(registration_api.endpoint, registered["access_token"])
        api.call("POST", "/connect", {})
        log(f"{name} registered and connected")
        self.idle_since[index] = time.monotonic()
        while (reason := self.should_disconnect()) is None:
            reply = api.call("GET", "/ping")
            if reply.get("job") and not self.stopping():
                self.run_job(index, name, api, reply["job"])
                self.idle_since[index] = time.monotonic()
                continue
            time.sleep(PING_SECONDS)
        api.call("POST", "/disconnect", {})
        log(f"{name} disconnected ({reason})")

    def run_job(self, index: int, name: str, api: Api, job: dict[str, str]) -> None:
        self.idle_since[index] = None
        job_id = job["id"]
        api.call("PUT", f"/jobs/{job_id}/start", {})
        log(f"{name} running job {job_id}")
        build_path = self.config.get("build-path", "/var/lib/buildkite-agent/builds")
        hooks = self.config.get("hooks-path", "/etc/buildkite-agent/hooks")
        env = dict(os.environ)
        env.update(
            BUILDKITE_AGENT_PID=str(os.getpid()),
            BUILDKITE_AGENT_NAME=name,
            BUILDKITE_JOB_ID=job_id,
            BUILDKITE_COMMAND=job["command"],
            HOOK=f"{hooks}/environment",
            CHECKOUT=f"{build_path}/{name}/pipeline",
        )
        process = subprocess.Popen(
            ["/bin/bash", "-c", HOOK_AND_RUN],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.jobs[index] = process
        # A cancel that came while the job was starting cancels it too: registered first,
        # then checked, so either this or on_term sees the other.
        if self.signals >= 2:
            os.killpg(process.pid, signal.SIGTERM)
        output = process.stdout.read().decode(errors="replace")
        status = process.wait()
        del self.jobs[index]
        for line in output.splitlines():
            log(f"job {job_id}: {line}")
        reason = "agent_stop" if self.signals >= 2 else None
        api.call("PUT", f"/jobs/{job_id}/finish", {"exit_status": status, "signal_reason": reason, "log": output})
        log(f"{name} finished job {job_id} with exit status {status}")


def start(args: list[str]) -> int:
    flags = parse_flags(args)
    path = flags.get("config", os.environ.get("BUILDKITE_AGENT_CONFIG", DEFAULT_CONFIG))
    with open(path) as file:
        config = parse_config(file.read())
    config.update(flags)
    token = config.get("token", "")
    if not token or token == PLACEHOLDER_TOKEN:
        raise ValueError("missing token: set token in the config (the package's placeholder is xxx)")
    agent = Agent(config)
    signal.signal(signal.SIGTERM, agent.on_term)
    signal.signal(signal.SIGQUIT, agent.on_quit)
    api = Api(config.get("endpoint", DEFAULT_ENDPOINT), token)
    threads = [
        threading.Thread(target=agent.guarded_worker, args=(i, api), daemon=True) for i in range(1, agent.spawn + 1)
    ]
    for thread in threads:
        thread.start()
    # Joined in short waits: a signal that arrives just as a blocking join begins would
    # wait, unhandled, until the thread ended (CPython runs handlers between bytecodes).
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)
    if agent.failure is not None:
        return 1
    log("all agents disconnected: exiting 0")
    return 0


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--version"]:
        print(VERSION)
        return 0
    if argv[1:2] != ["start"]:
        print("buildkite-agent stand-in: only --version and start", file=sys.stderr)
        return 1
    try:
        return start(argv[2:])
    except (ValueError, OSError, urllib.error.URLError) as error:
        log(f"fatal: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
