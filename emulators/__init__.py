"""Local stand-ins for what the Lambdas call: AWS in moto, the Buildkite metrics API on loopback.

Shared by the tests and the offline invoke (tools/invoke.py --offline); not part
of the Lambda artifact.
"""
