"""pytest fixtures of the real portal (tests/conftest.py imports them).

`real_portal_build` (session): the build for today's inputs, built on first use; tests
that need it are skipped with the reason where it cannot be built, unless
LEAM_REAL_PORTAL_REQUIRED=1 (CI), where they fail. `real_portal` (per test): a portal
of that build on a free loopback port, reset to the fresh database and started; stopped
and removed afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from testing.real_portal.build import LUC_ARCHIVE, Build, Unavailable, build
from testing.real_portal.portal import RealPortal


def required() -> bool:
    return os.environ.get("LEAM_REAL_PORTAL_REQUIRED") == "1"


@pytest.fixture(scope="session")
def real_portal_build() -> Build:
    # The tests use the leam.luc archive shipped beside the project, where there is one.
    if "LEAM_LUC_SOURCE" not in os.environ and LUC_ARCHIVE.exists():
        os.environ["LEAM_LUC_SOURCE"] = str(LUC_ARCHIVE)
    try:
        return build(log=lambda text: print(f"real portal: {text}", flush=True))
    except Unavailable as e:
        if required():
            pytest.fail(f"LEAM_REAL_PORTAL_REQUIRED=1 but the real portal cannot be built: {e}")
        pytest.skip(f"the real portal cannot be built here: {e}")
    except Exception as e:
        if required():
            raise
        pytest.skip(f"the real portal's build failed: {e}")


@pytest.fixture
def real_portal(real_portal_build: Build) -> Iterator[RealPortal]:
    portal = RealPortal(real_portal_build).reset()
    try:
        yield portal.start()
    finally:
        portal.close()
