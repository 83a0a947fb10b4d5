"""The instance lab (`make lab`): the real user-data booted in a Debian 12 VM under QEMU,
with the scaler, moto, an IMDS and a Buildkite agent API on loopback."""
