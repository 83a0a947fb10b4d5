"""Local simulation of the autoscaler on a job trace (a dev tool; not in the Lambda artifact)."""
