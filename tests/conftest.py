"""Fixtures live in tests/fixtures/, one module per kind of real thing they start."""

pytest_plugins = [
    "tests.fixtures.environment",
    "tests.fixtures.processes",
    "tests.fixtures.models",
    "tests.fixtures.gcs",
    "tests.fixtures.serving",
    "tests.fixtures.images",
    "tests.fixtures.control_plane",
    "tests.fixtures.prometheus",
]
