"""Config checks shared by every module that owns config keys.

A leaf module: the method, data, model and evaluation modules each validate
their own keys with these helpers, and ``config_lib`` loops over them. Every
message names the full dotted key, the value, and what would be valid.
"""


class ConfigError(ValueError):
  """A config value is invalid; the message names the key."""


def choice(key: str, value, valid) -> None:
  """Raises unless ``value`` is one of ``valid``."""
  if value not in valid:
    raise ConfigError(
      f"config.{key}={value!r} is not valid; choose one of: " + ", ".join(repr(v) for v in valid)
    )


def check(key: str, ok: bool, value, want: str) -> None:
  """Raises ``ConfigError`` for ``config.<key>=value`` unless ``ok``."""
  if not ok:
    raise ConfigError(f"config.{key}={value!r} is not valid: must be {want}.")
