"""Fixtures of the load suite: the real-host factory of the integration tests (tests/load/test_three_hosts.py
starts three hosts with it)."""

from tests.integration.conftest import hosts

__all__ = ["hosts"]
