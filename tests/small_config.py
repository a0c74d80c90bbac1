"""configs/digits.py shrunk to seconds (``tests.helpers.digits_config``), as a
config file for tests that run ``python -m caat_jax.main`` in a subprocess:

  python -m caat_jax.main --config=tests/small_config.py --workdir=/tmp/w
"""

from tests.helpers import digits_config


def get_config():
  return digits_config()
