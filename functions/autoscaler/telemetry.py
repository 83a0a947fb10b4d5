"""Structured logs and CloudWatch metrics (EMF), shared by both Lambdas."""

from __future__ import annotations

from collections.abc import Mapping

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

NAMESPACE = "BuildkiteAutoscaler"

logger = Logger(service="buildkite-autoscaler")


def emit(dimensions: Mapping[str, str], counts: Mapping[str, float]) -> None:
    """Write one EMF record: these counts under exactly these dimensions.

    EphemeralMetrics keeps no state shared between instances, so one
    record's dimensions never leak into another's. The service name is kept
    out of the dimensions (service="") so alarms and the dashboard address
    metrics by fleet and queue alone.
    """
    metrics = EphemeralMetrics(namespace=NAMESPACE, service="")
    for name, value in dimensions.items():
        metrics.add_dimension(name=name, value=value)
    for name, value in counts.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    metrics.flush_metrics()
