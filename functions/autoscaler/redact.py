"""Remove what looks like a secret from text that is about to be logged.

The reaper logs an instance's console output so an operator can see why its
bootstrap hung; a bootstrap that failed half-way may well have printed the
agent token, a key or AWS credentials there. Redaction errs on the side of
removing too much: a lost fragment of a log costs less than a leaked token.
"""

from __future__ import annotations

import re

MARK = "[REDACTED]"
TAIL_LINES = 40
TAIL_CHARS = 4096

_PRIVATE_KEY_BLOCK = re.compile(
    # To the END line, or to the end of the text when the output stops inside the block.
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
# The body of a key whose BEGIN line lies before the start of the text.
_PRIVATE_KEY_REST = re.compile(r"\A.*?-----END [A-Z0-9 ]*PRIVATE KEY-----", re.DOTALL)

_PATTERNS = (
    # Buildkite tokens of every prefix: bkua_ (REST and GraphQL), bkat_ (agent), bkct_
    # (cluster agent), bkjat_ (job acquisition: a JWT, three base64url parts joined by "."
    # that may hold "-" and "_"). Stopping at "." or "-" would leave a JWT's payload and
    # signature readable.
    re.compile(r"\bbk[a-z]{0,4}_[A-Za-z0-9._-]{16,}"),
    # GitHub tokens, should a deploy step print one.
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"),
    # AWS access key ids, long-term and temporary.
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
    # A Nix binary cache secret key: name:base64 of 64 bytes.
    re.compile(r"(?<=:)[A-Za-z0-9+/]{86}=="),
    # Credentials in a URL: https://user:password@host.
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),
)

# A name that says secret: aws_secret_access_key, BUILDKITE_AGENT_TOKEN,
# SecretAccessKey, password. Bounded so a pathological line stays linear.
_SENSITIVE_NAME = r"[\w.-]{0,40}(?:token|secret|passw(?:or)?d|api[_-]?key|private[_-]?key|credential)[\w.-]{0,40}"
# name=value, name: value, "name": "value".
_ASSIGNED = re.compile(rf"(?i)(\b{_SENSITIVE_NAME}[\"']?\s*[:=]\s*[\"']?)([^\s\"',;]{{8,}})")
# A long token-looking word after such a name or an auth scheme, without = or :
# (`--token X`, `Authorization: Token X`, `Authorization: Basic X`).
_FOLLOWING = re.compile(rf"(?i)(\b(?:{_SENSITIVE_NAME}|basic|bearer)\s+[\"']?)([A-Za-z0-9+/=_.~-]{{16,}})")

# The bootstrap's failure line: "buildkite-bootstrap: FAILED step=... exit=...: reason".
_VERDICT = re.compile(r"buildkite-bootstrap: FAILED step=")

# Terminal colour and cursor codes, which systemd writes to the console.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def redact(text: str) -> str:
    text = _PRIVATE_KEY_BLOCK.sub(MARK, text)
    text = _PRIVATE_KEY_REST.sub(MARK, text, count=1)
    for pattern in _PATTERNS:
        text = pattern.sub(MARK, text)
    text = _ASSIGNED.sub(lambda match: match.group(1) + MARK, text)
    return _FOLLOWING.sub(lambda match: match.group(1) + MARK, text)


def redacted_tail(text: str, max_lines: int = TAIL_LINES, max_chars: int = TAIL_CHARS) -> str:
    """The last lines of a console output, secrets removed, at most `max_chars` long.

    Redacts before cutting: a cut through a token could remove the start
    that makes it recognisable, while a cut after redaction can only drop text.
    The bootstrap's last failure line comes first when the tail would not show it.
    """
    lines = redact(_ANSI.sub("", text).replace("\r\n", "\n")).rstrip("\n").split("\n")
    tail = "\n".join(lines[-max_lines:])
    verdict = _last_verdict(lines[:-max_lines])
    if not verdict:
        return tail[-max_chars:]
    verdict = verdict[: max_chars // 4]
    return f"{verdict}\n{tail[-(max_chars - len(verdict) - 1) :]}"


def _last_verdict(lines: list[str]) -> str:
    """The bootstrap's failure line (step, exit code, reason) among `lines`, or "".

    A power-off prints a screenful of units stopping after it, which would
    push the one line that says why out of the tail."""
    return next((line for line in reversed(lines) if _VERDICT.search(line)), "")
