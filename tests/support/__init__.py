"""Helpers the test modules share: each module here is one concern; no test module imports another."""
