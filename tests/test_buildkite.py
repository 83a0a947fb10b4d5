"""The metrics client against the fake API over loopback HTTP."""

from __future__ import annotations

import pytest
from emulators.buildkite import FakeBuildkite, Reply, metrics_body

from autoscaler.buildkite import (
    MetricsAuthError,
    MetricsClient,
    MetricsMalformed,
    MetricsRateLimited,
    MetricsServerError,
    Secret,
)
from autoscaler.planner import QueueMetrics

TOKEN = "bkt_clientTESTtoken0123456789abcdef"


def client(fake: FakeBuildkite) -> MetricsClient:
    return MetricsClient(fake.endpoint, lambda: Secret(TOKEN))


def test_one_call_reads_every_queue_and_absent_queues_are_zero(buildkite: FakeBuildkite) -> None:
    buildkite.serve_metrics({"a": {"scheduled": 3, "running": 1, "idle": 2, "busy": 1, "total": 3}})

    snapshot = client(buildkite).fetch(["a", "b"])

    assert snapshot.for_queue("a") == QueueMetrics(scheduled=3, running=1, waiting=0, idle=2, busy=1, total=3)
    assert snapshot.for_queue("b") == QueueMetrics()
    assert [(r["path"], r["authorization"]) for r in buildkite.requests] == [("/v3/metrics", f"Token {TOKEN}")]


def test_missing_waiting_count_is_zero(buildkite: FakeBuildkite) -> None:
    body = metrics_body({"a": {"scheduled": 1}})
    del body["jobs"]["queues"]["a"]["waiting"]
    buildkite.answer(Reply(body=body))
    assert client(buildkite).fetch(["a"]).for_queue("a").waiting == 0


@pytest.mark.parametrize(
    ("header", "seconds"), [(None, 10.0), ("15", 15.0), ("0", 1.0), ("3600", 60.0), ("soon", 10.0), ("nan", 10.0)]
)
def test_poll_duration_header_is_honoured_within_bounds(
    buildkite: FakeBuildkite, header: str | None, seconds: float
) -> None:
    buildkite.answer(
        Reply(body=metrics_body({}), headers={"Buildkite-Agent-Metrics-Poll-Duration": header} if header else {})
    )
    assert client(buildkite).fetch([]).poll_seconds == seconds


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply(status=401, body={}), MetricsAuthError),
        (Reply(status=403, body={}), MetricsAuthError),
        (Reply(status=502, body={}), MetricsServerError),
        (Reply(status=302, body={}, headers={"Location": "http://127.0.0.1:1/"}), MetricsServerError),
        (Reply(body="[1, 2]"), MetricsMalformed),
        (Reply(body=metrics_body({"a": {"total": -1}})), MetricsMalformed),
        (Reply(body=metrics_body({"a": {"running": 1.5}})), MetricsMalformed),
    ],
)
def test_each_failure_has_its_own_error_type(buildkite: FakeBuildkite, reply: Reply, error: type[Exception]) -> None:
    buildkite.answer(reply)
    with pytest.raises(error) as raised:
        client(buildkite).fetch(["a"])
    assert TOKEN not in str(raised.value)


def test_rate_limit_reports_retry_after(buildkite: FakeBuildkite) -> None:
    buildkite.answer(Reply(status=429, body={}, headers={"Retry-After": "42"}))
    with pytest.raises(MetricsRateLimited) as raised:
        client(buildkite).fetch([])
    assert raised.value.retry_after == 42.0


def test_an_unreachable_api_is_a_server_error_without_the_token() -> None:
    unreachable = MetricsClient("http://127.0.0.1:9/v3", lambda: Secret(TOKEN))
    with pytest.raises(MetricsServerError) as raised:
        unreachable.fetch([])
    assert TOKEN not in str(raised.value)


def test_the_secret_never_prints() -> None:
    secret = Secret(TOKEN)
    assert TOKEN not in repr(secret)
    assert TOKEN not in f"{secret} {[secret]}"
    assert secret.reveal() == TOKEN
