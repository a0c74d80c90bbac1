"""Shared by the meta-gradient tests: float64 where the checks need it."""

import jax
import pytest


@pytest.fixture
def x64():
  """Double precision for the test (``pytestmark = pytest.mark.usefixtures("x64")``)."""
  with jax.enable_x64(True):
    yield
