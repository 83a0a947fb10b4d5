"""The stack's own cost: held under $5 a month at the template's defaults, shown in the bill."""

from __future__ import annotations

import json

import pytest
from simulation.__main__ import main
from simulation.deployment import deployment

# Issue 21: the control plane (Lambdas, custom metrics, logs, alarms) at most this a month.
CONTROL_PLANE_BUDGET = 5.00


@pytest.fixture
def default_day(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    """The default day at the template's defaults, as --json prints it."""
    assert main(["--json", "--no-chart", "--runs", "1"]) == 0
    return json.loads(capsys.readouterr().out)["baseline"]


def test_the_control_plane_costs_at_most_five_dollars_a_month(default_day: dict[str, object]) -> None:
    stack = default_day["stack_per_month"]
    assert isinstance(stack, dict)
    assert stack["control_plane"] <= CONTROL_PLANE_BUDGET
    # A healthy day publishes no custom metric: the alarmed counts are emitted only when non-zero.
    assert stack["custom_metrics_published"] == 0
    assert stack["metrics"] == 0
    assert stack["alarms"] == pytest.approx(0.60)  # six alarms
    assert stack["dashboard"] == pytest.approx(3.00)  # on by default, and optional
    parts = ("lambda_compute", "lambda_requests", "metrics", "logs", "alarms", "dashboard", "bake_instances")
    assert stack["total"] == pytest.approx(sum(stack[part] for part in parts) + stack["bake_snapshots"])


def test_the_monthly_total_is_the_queues_and_the_stack(default_day: dict[str, object]) -> None:
    queues = default_day["spread"]
    assert isinstance(queues, list)
    stack = default_day["stack_per_month"]
    assert isinstance(stack, dict)
    expected = sum(queue["cost_per_month"]["median"] for queue in queues) + stack["total"]
    assert default_day["total_per_month"] == pytest.approx(expected)


def test_the_lambdas_are_deployed_at_the_least_memory() -> None:
    # Measured with tools/measure.py: the scaler's cold start leaves 72 MB in use, a poll adds little.
    assert set(deployment().memory_mb.values()) == {128}


def test_the_table_shows_the_stack_as_its_own_lines_and_in_the_total(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-chart", "--runs", "1", "--label", "stock", "--compare", "baked:boot_path=baked"]) == 0
    out = capsys.readouterr().out
    block = out[out.index("stack (fixed)") :].splitlines()
    names = [line[:18].strip() for line in block[1:9]]
    assert names == [
        "Lambdas",
        "custom metrics",
        "logs",
        "alarms",
        "dashboard",
        "image bake",
        "stack $ per month",
        "total $ per month",
    ]
    stack = {name: line.split()[-2:] for name, line in zip(names, block[1:9], strict=True)}
    per_queue = [line.split()[-2:] for line in out.splitlines() if line.startswith("$ per month")]
    for column in (0, 1):
        queues = sum(float(row[column]) for row in per_queue)
        total = float(stack["total $ per month"][column])
        # The queues' rounded dollars plus the stack, within the rounding of the printed figures.
        assert total == pytest.approx(queues + float(stack["stack $ per month"][column]), abs=1.5)
    assert "Left out: the Nix cache bucket" in out
