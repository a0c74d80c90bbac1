"""Config files that build on each other, from any working directory.

Config files are loaded by path (``--config=configs/digits.py``), not imported
as a package, so ``from configs import default`` would find ``default.py``
only with the repository root as the working directory. A config file loads
the file it builds on from its own directory instead::

  from caat_jax import config_files

  default = config_files.sibling(__file__, "default")

This module imports nothing from caat_jax, so loading a config stays cheap.
"""

import hashlib
import importlib.util
import os
import sys
import types


def sibling(file: str, name: str) -> types.ModuleType:
  """The module ``name``.py in the directory of ``file`` (pass ``__file__``).

  Loaded once per process: it is kept in ``sys.modules`` under a name unique
  to its absolute path, so two loads return the same module.
  """
  path = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(file)), name + ".py"))
  key = f"_caat_config_file_{name}_{hashlib.sha1(path.encode()).hexdigest()[:12]}"
  module = sys.modules.get(key)
  if module is not None:
    return module
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"config file {os.path.basename(file)!r} builds on "
      f"{name + '.py'!r}, which is not beside it ({path})"
    )
  spec = importlib.util.spec_from_file_location(key, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[key] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[key]
    raise
  return module
