"""Buildkite agent autoscaler for EC2: the scaler and reaper Lambdas."""
