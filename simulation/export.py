"""`python -m simulation.export`: your Buildkite history as a simulation trace.

Reads builds from Buildkite's REST API (`GET /v2/organizations/{org}/builds`,
or one pipeline's) with an API token that has `read_builds`, taken from the
`BUILDKITE_API_TOKEN` environment variable so it never appears in a command
line, and writes the CSV `python -m simulation --trace` reads: one row per
script job that ran, with its queue, the time it became runnable (ISO-8601),
its duration, its id, and the jobs it waited on.

Dependencies: a job after a `wait` step waits on the jobs of the step group
before it (earlier groups are waited on through them); other dependencies
(`depends_on` between steps) are not in the REST API's job objects, so those
jobs are taken as runnable when Buildkite made them runnable.

Pages follow the `Link: rel="next"` header; a 429 waits for `RateLimit-Reset`
(or `Retry-After`) seconds, as does a page that leaves `RateLimit-Remaining` at 0.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

API = "https://api.buildkite.com/v2"
TOKEN_VARIABLE = "BUILDKITE_API_TOKEN"  # noqa: S105 - the variable's name, not a token
PER_PAGE = 100
MAX_RATE_LIMIT_WAITS = 10
TIMEOUT_SECONDS = 30
# Where Buildkite runs a job without a queue= rule: the cluster's default queue, whose key is
# `default-queue` in an organisation created since February 2024 (only clusters); `default`
# for unclustered agents.
DEFAULT_QUEUE = "default-queue"


class ExportError(RuntimeError):
    """The export failed; the message never holds the token."""


class EndpointError(ExportError):
    """The --api URL does not answer as Buildkite's REST API (no connection, or not JSON): bad input."""


@dataclass(frozen=True)
class TraceRow:
    queue: str
    scheduled_at: str  # ISO-8601
    duration: float
    job_id: str
    waits_on: tuple[str, ...]


def builds_url(api: str, org: str, pipeline: str | None) -> str:
    base = f"{api.rstrip('/')}/organizations/{org}"
    return f"{base}/pipelines/{pipeline}/builds" if pipeline else f"{base}/builds"


def fetch_builds(
    session: requests.Session,
    url: str,
    params: dict[str, str],
    progress: Callable[[int, int], None],
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict[str, Any]]:
    """Every build, page by page, honouring the rate limit."""
    pages = builds = 0
    next_url: str | None = url
    query: dict[str, str] | None = {**params, "per_page": str(PER_PAGE)}
    while next_url:
        response = _get(session, next_url, query, sleep)
        try:
            page = response.json()
        except ValueError:
            kind = response.headers.get("Content-Type") or "no content type"
            raise EndpointError(f"GET {_url(next_url)}: the reply is not JSON ({kind}); check --api") from None
        if not isinstance(page, list):
            raise ExportError(f"GET {_path(next_url)}: expected a JSON list of builds (got {type(page).__name__})")
        pages, builds = pages + 1, builds + len(page)
        progress(pages, builds)
        yield from page
        next_url, query = response.links.get("next", {}).get("url"), None  # the next link carries the query
        if next_url and response.headers.get("RateLimit-Remaining") == "0":
            sleep(_reset_seconds(response))


def _get(
    session: requests.Session, url: str, query: dict[str, str] | None, sleep: Callable[[float], None]
) -> requests.Response:
    for _ in range(MAX_RATE_LIMIT_WAITS + 1):
        try:
            response = session.get(url, params=query, timeout=TIMEOUT_SECONDS)
        except requests.RequestException as error:
            # The exception's text may quote the request; name only its kind and the URL (no query).
            raise EndpointError(f"GET {_url(url)}: {type(error).__name__}; check --api and the network") from None
        if response.status_code != 429:
            if response.status_code != 200:
                hint = " (check the token and its read_builds scope)" if response.status_code in (401, 403) else ""
                raise ExportError(f"GET {_path(url)}: HTTP {response.status_code}{hint}")
            return response
        sleep(_reset_seconds(response))
    raise ExportError(f"GET {_path(url)}: still rate limited after {MAX_RATE_LIMIT_WAITS} waits")


def _reset_seconds(response: requests.Response) -> float:
    for header in ("RateLimit-Reset", "Retry-After"):
        try:
            return max(0.0, float(response.headers[header]))
        except (KeyError, ValueError):
            continue
    return 60.0  # Buildkite's limit is per minute


def _path(url: str) -> str:
    return requests.utils.urlparse(url).path


def _url(url: str) -> str:
    """Scheme, host and path: where the request went, without its query."""
    parts = requests.utils.urlparse(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def trace_rows(build: dict[str, Any], default_queue: str = DEFAULT_QUEUE) -> list[TraceRow]:
    """The build's script jobs that ran, each waiting on the step group before its `wait`;
    a job without a `queue=` rule on `default_queue`."""
    rows: list[TraceRow] = []
    previous: list[str] = []  # the last non-empty group before a wait
    group: list[str] = []
    waited = False
    for job in build.get("jobs") or []:
        if job.get("type") == "waiter":
            previous, group, waited = (group or previous), [], True
            continue
        if job.get("type") != "script" or not (job.get("started_at") and job.get("finished_at")):
            continue
        waits_on = tuple(previous) if waited else ()
        ready = job.get("scheduled_at") if waits_on else (job.get("runnable_at") or job.get("scheduled_at"))
        if not ready:
            continue
        duration = (_time(job["finished_at"]) - _time(job["started_at"])).total_seconds()
        rows.append(TraceRow(_queue(job) or default_queue, ready, max(0.0, duration), str(job["id"]), waits_on))
        group.append(str(job["id"]))
    return rows


def _queue(job: dict[str, Any]) -> str:
    """The job's `queue=` rule; "" for none."""
    for rule in job.get("agent_query_rules") or []:
        key, _, value = str(rule).partition("=")
        if key == "queue":
            return value
    return ""


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def write_csv(rows: list[TraceRow], path: Path) -> None:
    """Written to a temporary file first: a failed export leaves no half a trace."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["queue", "scheduled_at", "duration", "id", "waits_on"])
        for row in sorted(rows, key=lambda r: (r.scheduled_at, r.job_id)):
            writer.writerow([row.queue, row.scheduled_at, f"{row.duration:.1f}", row.job_id, " ".join(row.waits_on)])
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    token = os.environ.get(TOKEN_VARIABLE, "").strip()
    if not token:
        print(f"error: set {TOKEN_VARIABLE} to a Buildkite API token with read_builds", file=sys.stderr)
        return 2
    # Checked before the export, which may take many pages of the API's rate limit.
    if not args.out.parent.is_dir():
        print(f"error: --out {args.out}: no folder {args.out.parent}", file=sys.stderr)
        return 2
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    params = {"created_from": args.since, **({"created_to": args.until} if args.until else {})}

    def progress(pages: int, builds: int) -> None:
        print(f"page {pages}: {builds} builds", file=sys.stderr, flush=True)

    started = time.monotonic()
    try:
        rows = [
            row
            for build in fetch_builds(session, builds_url(args.api, args.org, args.pipeline), params, progress)
            for row in trace_rows(build, args.default_queue)
        ]
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, EndpointError) else 1
    write_csv(rows, args.out)
    elapsed = time.monotonic() - started
    print(f"wrote {len(rows)} jobs to {args.out} in {elapsed:.1f} s", file=sys.stderr)
    on_default = sum(row.queue == args.default_queue for row in rows)
    if on_default:
        print(
            f"{on_default} jobs on queue {args.default_queue!r}, where Buildkite runs jobs without a queue= rule "
            "(--default-queue sets its key)",
            file=sys.stderr,
        )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulation.export",
        description=f"Export Buildkite builds as a simulation trace (token in ${TOKEN_VARIABLE}).",
    )
    parser.add_argument("--org", required=True, help="organization slug")
    parser.add_argument("--pipeline", help="one pipeline's slug (default: every pipeline)")
    parser.add_argument("--since", required=True, help="builds created from this ISO-8601 time")
    parser.add_argument("--until", help="builds created up to this ISO-8601 time")
    parser.add_argument("--out", type=Path, default=Path("trace.csv"), help="the CSV to write (default trace.csv)")
    parser.add_argument("--api", default=API, help=f"REST API base (default {API})")
    parser.add_argument(
        "--default-queue",
        default=DEFAULT_QUEUE,
        help=f"queue key of jobs without a queue= rule (default {DEFAULT_QUEUE}, a new organisation's default "
        "cluster queue; unclustered agents: default)",
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
