"""Shared fixtures: each lives in tests/fixtures/ and is registered here."""

pytest_plugins = [
    "tests.fixtures.cli",
    "tests.fixtures.pii",
    "tests.fixtures.postgres",
    "tests.fixtures.sandbox",
    "tests.fixtures.s3",
    "tests.fixtures.s3proxy",
]
