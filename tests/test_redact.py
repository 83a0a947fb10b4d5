"""Secrets that a failed bootstrap may print to the console, and what is left of them."""

from __future__ import annotations

import pytest

from autoscaler.redact import MARK, TAIL_CHARS, TAIL_LINES, redact, redacted_tail

# All fake; shaped like the real thing.
AGENT_TOKEN = "bkct_4f9c2a7e1b3d5f6a8c0e2b4d6f8a1c3e5b7d9f0a"
API_TOKEN = "bkua_0123456789abcdef0123456789abcdef01234567"
HEX_TOKEN = "3f1a9c0e7d2b4a6f8e1c3b5d7a9f0e2c4b6d8a1f3e5c7b9d"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SESSION_KEY = "ASIAY34FZKBOKMUTVV7A"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEPT//////////wEaCXVzLWVhc3QtMSJGMEQCIBx5"
NIX_SECRET = "cache.example.org-1:" + "A" * 86 + "=="
GITHUB_TOKEN = "ghp_" + "x1Y2z3" * 6
PEM_BODY = "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun"
# A job acquisition token as the Stacks API issues it: bkjat_ and a JWT (header.payload.signature,
# base64url: "-" and "_" inside, "." between).
JOB_TOKEN = (
    "bkjat_eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJqb2JfdXVpZCI6IjAxOTNhZjQ4LTdjNTgtNDk1ZS1iZjE2LTZhZDA0OWY3ZTM1YyIsImV4cCI6MTc2NDkxMjAwMH0"
    ".MEUCIQDx-3j9_vLq0Zr7Yw2Kf1-Hb_8mPqT4nS6uVcE5dGaXoAIgV_2kL-9pR3sQ7tN1yZ0wB4cD6eF8gH2iJ5kM7nO9pQ"
)
AGENT_ACCESS_TOKEN = "bkat_6e4a1f0c9b2d8e7a3c5f1b9d0e2a4c6f8b1d3e5a"


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        (f"agent token is {AGENT_TOKEN}", AGENT_TOKEN),
        (f"agent session {AGENT_ACCESS_TOKEN} registered", AGENT_ACCESS_TOKEN),
        (f"acquiring with {JOB_TOKEN} now", JOB_TOKEN),
        (f"curl -H 'Authorization: Bearer {API_TOKEN}'", API_TOKEN),
        (f"BUILDKITE_AGENT_TOKEN={HEX_TOKEN}", HEX_TOKEN),
        (f"export TOKEN='{HEX_TOKEN}'", HEX_TOKEN),
        (f"token: {HEX_TOKEN}", HEX_TOKEN),
        (f'{{"token": "{HEX_TOKEN}"}}', HEX_TOKEN),
        (f"buildkite-agent start --token {HEX_TOKEN} --tags queue=x", HEX_TOKEN),
        (f"Authorization: Token {HEX_TOKEN}", HEX_TOKEN),
        (f"Authorization: Basic {SESSION_TOKEN}", SESSION_TOKEN),
        (f"aws_access_key_id = {ACCESS_KEY}", ACCESS_KEY),
        (f"credentials from {SESSION_KEY} expired", SESSION_KEY),
        (f"aws_secret_access_key = {SECRET_KEY}", SECRET_KEY),
        (f"AWS_SECRET_ACCESS_KEY={SECRET_KEY}", SECRET_KEY),
        (f'  "SecretAccessKey" : "{SECRET_KEY}",', SECRET_KEY),
        (f'  "Token" : "{SESSION_TOKEN}",', SESSION_TOKEN),
        (f"AWS_SESSION_TOKEN={SESSION_TOKEN}", SESSION_TOKEN),
        ("password=hunter2hunter2 user=ci", "hunter2hunter2"),
        (f"echo {NIX_SECRET} > /etc/nix/signing-key", NIX_SECRET.split(":", 1)[1]),
        (f"git clone https://x-access-token:{GITHUB_TOKEN}@github.com/o/r", GITHUB_TOKEN),
        (f"GITHUB_TOKEN leaked as {GITHUB_TOKEN}", GITHUB_TOKEN),
    ],
)
def test_a_secret_on_a_line_is_redacted(line: str, secret: str) -> None:
    redacted = redact(line)

    assert secret not in redacted
    assert MARK in redacted


@pytest.mark.parametrize("line", [f"job token {JOB_TOKEN}", f'{{"job_acquisition_token": "{JOB_TOKEN}"}}'])
def test_no_part_of_a_job_acquisition_token_is_left(line: str) -> None:
    redacted = redact(line)

    for part in JOB_TOKEN.removeprefix("bkjat_").split("."):
        assert part not in redacted
    assert "bkjat_" not in redacted


def test_a_private_key_block_is_removed_whole() -> None:
    text = "\n".join(
        [
            "writing key",
            "-----BEGIN OPENSSH PRIVATE KEY-----",
            PEM_BODY,
            PEM_BODY[::-1],
            "-----END OPENSSH PRIVATE KEY-----",
            "done",
        ]
    )

    assert redact(text) == f"writing key\n{MARK}\ndone"


def test_a_key_block_cut_at_either_end_is_removed() -> None:
    began_before = f"{PEM_BODY}\n-----END RSA PRIVATE KEY-----\nafter"
    ends_after = f"before\n-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n"

    assert redact(began_before) == f"{MARK}\nafter"
    assert redact(ends_after) == f"before\n{MARK}"


def test_ordinary_boot_output_is_kept() -> None:
    text = "\n".join(
        [
            "[  OK  ] Started buildkite-bootstrap.service.",
            "ci-bootstrap: fetching /buildkite/agent-token from SSM",
            "ci-bootstrap: token parameter not found; retrying in 10s",
            "nix: unable to download 'https://cache.nixos.org/nix-cache-info': HTTP error 503",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKqLZ3JZ root@ip-10-0-0-1",
            "password authentication disabled",
        ]
    )

    assert redact(text) == text


def test_the_tail_keeps_the_last_lines_redacted() -> None:
    lines = [f"line {number}" for number in range(100)]
    lines[-2] = f"BUILDKITE_AGENT_TOKEN={HEX_TOKEN}"
    text = "\r\n".join(lines) + "\r\n"

    tail = redacted_tail(text)

    assert tail.split("\n") == [*lines[-TAIL_LINES:-2], f"BUILDKITE_AGENT_TOKEN={MARK}", "line 99"]


def test_the_tail_is_bounded_in_characters_and_cut_only_after_redaction() -> None:
    # One very long last line: a cut at TAIL_CHARS falls inside the token's
    # line; its recognisable start must not be cut off before redaction.
    text = f"token={HEX_TOKEN} " + "x" * (TAIL_CHARS - 10) + "\n"
    assert HEX_TOKEN[-8:] in text[-TAIL_CHARS:]  # a cut-then-redact tail would show this

    tail = redacted_tail(text)

    assert len(tail) == TAIL_CHARS
    assert HEX_TOKEN[-8:] not in tail


def test_the_tail_drops_terminal_codes() -> None:
    assert redacted_tail("\x1b[0;32m  OK  \x1b[0m Started cloud-init.\n") == "  OK   Started cloud-init."


def test_no_output_gives_an_empty_tail() -> None:
    assert redacted_tail("") == ""


def test_the_bootstrap_failure_stays_in_the_tail_after_a_screenful_of_power_off_lines() -> None:
    failure = "buildkite-bootstrap: FAILED step=check_tag_permission exit=1: REFUSED: ec2:CreateTags on i-0abc"
    power_off = [f"[  OK  ] Stopped unit-{number}.service." for number in range(2 * TAIL_LINES)]
    text = "\n".join(["cloud-init ran", failure, "buildkite-bootstrap: powering off", *power_off, "reboot: Power down"])

    tail = redacted_tail(text)

    assert tail.split("\n")[0] == failure
    assert tail.endswith("reboot: Power down")
    assert len(tail.split("\n")) == TAIL_LINES + 1


def test_a_failure_in_the_tail_is_not_repeated() -> None:
    text = "booting\nbuildkite-bootstrap: FAILED step=read_secrets exit=254\nbuildkite-bootstrap: powering off\n"

    assert redacted_tail(text).count("FAILED") == 1


def test_a_tail_led_by_a_failure_keeps_to_its_length_in_characters() -> None:
    failure = "buildkite-bootstrap: FAILED step=start_agent exit=1: " + "y" * TAIL_CHARS
    text = "\n".join([failure, *["x" * 200] * (2 * TAIL_LINES)])

    tail = redacted_tail(text)

    assert len(tail) <= TAIL_CHARS
    assert tail.startswith("buildkite-bootstrap: FAILED step=start_agent exit=1: ")


@pytest.mark.parametrize("prefix", ["bkua_", "bkat_", "bkct_", "bkjat_"])
def test_every_buildkite_token_prefix_is_redacted_with_no_name_before_it(prefix: str) -> None:
    token = prefix + JOB_TOKEN.removeprefix("bkjat_")

    assert redact(f"registered with {token} at 05:00") == f"registered with {MARK} at 05:00"


@pytest.mark.parametrize(
    "line",
    [
        # The session token the agent gets at registration and hands its jobs.
        f"BUILDKITE_AGENT_ACCESS_TOKEN={HEX_TOKEN}",
        # An unclustered registration token in the agent's config, and a cluster one.
        f'token="{HEX_TOKEN}"',
        f'token="{AGENT_TOKEN}"',
        f"POST /v3/register Authorization: Token {JOB_TOKEN}",
    ],
)
def test_agent_registration_and_session_tokens_are_redacted(line: str) -> None:
    redacted = redact(line)

    assert HEX_TOKEN not in redacted
    assert AGENT_TOKEN not in redacted
    assert JOB_TOKEN.split(".")[1] not in redacted
    assert MARK in redacted
