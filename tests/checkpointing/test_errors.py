"""The filters that keep orbax's echoes of an error we report off the screen."""

import logging

import pytest

from caat_jax.checkpointing import errors


def _record(msg, exc):
  return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None, (type(exc), exc, None))


@pytest.mark.parametrize("kind", ["Future", "Task"])
def test_unretrieved_tensorstore_read_errors_are_dropped(kind):
  """Either asyncio message, depending on whether the read ran as a task."""
  read_error = ValueError("OUT_OF_RANGE: Error reading ... [tensorstore_spec='{}']")
  msg = f"{kind} exception was never retrieved\nfuture: <...>"
  assert not errors._READ_FILTER.filter(_record(msg, read_error))


def test_other_unretrieved_errors_are_kept():
  assert errors._READ_FILTER.filter(
    _record("Task exception was never retrieved", ValueError("something else"))
  )
  assert errors._READ_FILTER.filter(
    _record("Unrelated message", ValueError("[tensorstore_spec='{}']"))
  )
