"""What the command lines share: flag parsing that ends a bad invocation in
one clear line instead of a traceback.

``app.run(main, flags_parser=cli.parse_flags)``: a config file that does not
exist or does not load, a ``:variant`` on a config that takes none, an unknown
``--config.KEY`` (with the closest valid keys) or a value of the wrong type
each print ``error: ...`` naming the flag, and exit with status 1.

``check_output_dir`` / ``check_output_file``: every path a user names for
output is checked first, before any work and without creating anything, so
that a folder that cannot be written ends in one line naming the flag.
"""

import difflib
import importlib.util
import inspect
import os
import sys

from absl import flags


def _flag_values(argv, name: str) -> list[str]:
  """The values given to ``--name`` (``--name=v`` or ``--name v``)."""
  out = []
  for i, a in enumerate(argv):
    if a.startswith(f"--{name}="):
      out.append(a.split("=", 1)[1])
    elif a == f"--{name}" and i + 1 < len(argv):
      out.append(argv[i + 1])
  return out


def _flatten(tree, prefix=""):
  keys = []
  for k, v in tree.items():
    if hasattr(v, "items"):
      keys.extend(_flatten(v, f"{prefix}{k}."))
    else:
      keys.append(f"{prefix}{k}")
  return keys


def load_config(arg: str, root: str | None = None):
  """(config, None) from ``path[:variant]``, or (None, message).

  ``path`` is relative to ``root`` (default the working directory). The
  configs under ``configs/`` load the files they build on from their own
  directory (``caat_jax.config_files.sibling``), so they need no particular
  root and nothing on ``sys.path``.
  """
  root = root or os.getcwd()
  given, _, variant = arg.partition(":")
  path = os.path.join(root, given)
  if not os.path.isfile(path):
    return None, f"--config={arg}: no such file {given!r} (relative to {root})"
  try:
    spec = importlib.util.spec_from_file_location("_caat_config_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except SyntaxError as e:
    return None, f"--config={arg}: syntax error in {given}, line {e.lineno}: {e.msg}"
  except Exception as e:  # pylint: disable=broad-except
    return None, f"--config={arg}: loading {given} failed: {type(e).__name__}: {e}"
  get_config = getattr(module, "get_config", None)
  if get_config is None:
    return None, f"--config={arg}: {given} defines no get_config()"
  takes_arg = len(inspect.signature(get_config).parameters) > 0
  if variant and not takes_arg:
    return None, f"--config={arg}: {given} takes no ':variant'; use --config={given}"
  try:
    return (get_config(variant) if takes_arg and variant else get_config()), None
  except Exception as e:  # pylint: disable=broad-except
    return None, f"--config={arg}: {type(e).__name__}: {e}"


def diagnose(argv, error: Exception) -> str:
  """One line saying which flag is wrong and what would be valid."""
  configs = _flag_values(argv, "config")
  if configs:
    config, message = load_config(configs[-1])
    if message:
      return message
    valid = _flatten(config)
    for a in argv:
      if not a.startswith("--config."):
        continue
      key, _, value = a[len("--config.") :].partition("=")
      if key not in valid:
        close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join('config.' + c for c in close)}?" if close else ""
        return f"--config.{key}: config.{key} is not a config key{hint}"
  text = str(error).strip().splitlines()
  return text[-1] if text else type(error).__name__


def parse_flags(argv):
  """``absl.flags.FLAGS(argv)``; a bad flag exits 1 with one line."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    # config_flags loads the file and applies overrides while parsing, and
    # raises whatever went wrong there (OSError, AttributeError, TypeError).
    sys.stderr.write(f"error: {diagnose(argv, e)}\n")
    sys.exit(1)


def config_flag(argv=None, name: str = "config"):
  """The value of a config_flags flag; a config that failed to load exits 1
  with one line (config_flags reports a missing file only when read)."""
  argv = sys.argv if argv is None else argv
  try:
    value = flags.FLAGS[name].value
    value.items()  # a config that failed to load raises on first use
    return value
  except Exception as e:  # pylint: disable=broad-except
    sys.stderr.write(f"error: {diagnose(argv, e)}\n")
    sys.exit(1)


class OutputPathError(ValueError):
  """A path given for output cannot be used (message names the flag)."""


def _dir_problem(path: str) -> str | None:
  """Why ``path`` cannot be (or become) a writable directory; None if it can.

  Creates nothing: the nearest existing ancestor must be a directory this
  process may write into, and no component of the path may be a file.
  """
  if not path:
    return "is empty; pass a directory"
  path = os.path.abspath(path)
  here = path
  while not os.path.lexists(here):
    parent = os.path.dirname(here)
    if parent == here:
      break
    here = parent
  if not os.path.isdir(here):
    if here == path:
      return "is a file, not a directory; pass a directory (it is created if missing)"
    return f"cannot be created: {here} is a file, not a directory"
  if not os.access(here, os.W_OK | os.X_OK):
    if here == path:
      return "is not writable; pass a directory you can write to"
    return f"cannot be created: {here} is not writable"
  return None


def check_output_dir(flag: str, path: str | None) -> None:
  """Raises OutputPathError (one line naming ``--flag``) unless ``path`` is a
  directory that exists or can be created, and can be written to. Nothing is
  created. ``None`` (the flag not given) passes."""
  if path is None:
    return
  problem = _dir_problem(path)
  if problem:
    raise OutputPathError(f"--{flag}={path} {problem}")


def check_output_file(flag: str, path: str | None) -> None:
  """As ``check_output_dir`` for a file to write: its folder exists or can be
  created and is writable; the path is not a directory; an existing file is
  writable. Nothing is created or changed."""
  if path is None:
    return
  if not path or path.endswith(os.sep):
    raise OutputPathError(f"--{flag}={path} names no file; pass a file path")
  if os.path.isdir(path):
    raise OutputPathError(f"--{flag}={path} is a directory; pass a file path")
  folder = os.path.dirname(os.path.abspath(path))
  problem = _dir_problem(folder)
  if problem:
    raise OutputPathError(f"--{flag}={path}: its folder {folder} {problem}")
  if os.path.lexists(path) and not os.access(path, os.W_OK):
    raise OutputPathError(f"--{flag}={path} is not writable; pass a file you can write")


def require_output(check, flag: str, path: str | None) -> None:
  """``check(flag, path)``; a problem exits 1 with its one line on stderr."""
  try:
    check(flag, path)
  except OutputPathError as e:
    sys.exit(f"error: {e}")
