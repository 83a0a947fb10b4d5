"""Structured logs and CloudWatch metrics (EMF), shared by both Lambdas."""

from __future__ import annotations

from collections.abc import Mapping

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

NAMESPACE = "BuildkiteAutoscaler"

logger = Logger(service="buildkite-autoscaler")


def emit(dimensions: Mapping[str, str], counts: Mapping[str, float]) -> None:
    """Write one EMF record of the non-zero counts under exactly these dimensions; none when all are zero.

    CloudWatch bills a custom metric for each hour it is published in, so a count
    that is zero on a healthy day is left out and costs nothing; the alarms treat
    the missing data as not breaching. Everything else a poll saw and did is in
    its decision log line, read by the dashboard's Logs Insights widgets.

    EphemeralMetrics keeps no state shared between instances, so one
    record's dimensions never leak into another's. The service name is kept
    out of the dimensions (service="") so alarms address metrics by fleet alone.
    """
    nonzero = {name: value for name, value in counts.items() if value}
    if not nonzero:
        return
    metrics = EphemeralMetrics(namespace=NAMESPACE, service="")
    for name, value in dimensions.items():
        metrics.add_dimension(name=name, value=value)
    for name, value in nonzero.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    metrics.flush_metrics()
