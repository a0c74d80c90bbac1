"""Data parallelism: one per-device function, wrapped by ``pmap`` or ``shard_map``.

Steps are written once, per device, with a named axis (``lax.pmean`` of
gradients, BatchNorm statistics over the axis). This module wraps them:

* ``pmap`` (default, as the user's design asks): replicated values carry a
  leading device axis; batches are [devices, per_device, ...].
* ``shard_map`` over a 1-D mesh: replicated values are global arrays with a
  replicated sharding; batches are global arrays sharded on their first axis.

The trainer never looks inside these layouts: it calls ``replicate``,
``shard``, ``wrap``, and ``fetch`` / ``gather`` to bring results to the host.
Multi-host: every process passes its *host-local* part of each global batch to
``shard``; devices are all global devices, the axis spans every host.
"""

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from caat_jax import multihost, supervisor

BACKENDS = ("pmap", "shard_map")
REPLICATED = "r"
SHARDED = "s"


class Parallel:
  """Wraps per-device functions and moves data for one backend."""

  def __init__(
    self,
    backend: str = "pmap",
    axis_name: str = "batch",
    devices: Sequence[jax.Device] | None = None,
  ):
    if backend not in BACKENDS:
      raise ValueError(f"config.parallel.backend={backend!r}; valid: {', '.join(BACKENDS)}")
    self.backend = backend
    self.axis_name = axis_name
    self.devices = list(devices) if devices is not None else jax.devices()
    self.num_devices = len(self.devices)
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    self.mesh = jax.make_mesh(
      (self.num_devices,), (axis_name,), axis_types=(AxisType.Auto,), devices=self.devices
    )
    self._sharded = NamedSharding(self.mesh, P(axis_name))
    self._replicated = NamedSharding(self.mesh, P())

  # -- layouts ----------------------------------------------------------------
  def replicate(self, tree: Any) -> Any:
    """Host (or single-device) pytree -> the backend's replicated layout."""
    if self.backend == "pmap":
      n = len(self.local_devices)
      return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(
          self._sharded, np.broadcast_to(np.asarray(x), (n,) + np.shape(x))
        ),
        tree,
      )
    return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(self._replicated, np.asarray(x)), tree
    )

  def shard(self, batch: Any) -> Any:
    """Host-local batch [b_host, ...] -> the backend's sharded layout."""
    if self.backend == "pmap":
      n = len(self.local_devices)

      def put(x):
        x = np.asarray(x)
        if x.shape[0] % n:
          raise ValueError(f"host batch of {x.shape[0]} is not divisible by {n} local devices")
        return jax.make_array_from_process_local_data(
          self._sharded, x.reshape((n, x.shape[0] // n) + x.shape[1:])
        )

      return jax.tree.map(put, batch)
    return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(self._sharded, np.asarray(x)), batch
    )

  def fetch(self, tree: Any) -> Any:
    """Replicated layout -> host numpy (one copy, from a local device)."""

    def one(x):
      x = x.addressable_data(0)
      return np.asarray(x[0] if self.backend == "pmap" else x)

    return jax.tree.map(one, tree)

  def unreplicate(self, tree: Any) -> Any:
    """Replicated layout -> the value as single-device arrays (for saving)."""
    return jax.tree.map(lambda x: jax.numpy.asarray(x), self.fetch(tree))

  def gather(self, tree: Any) -> Any:
    """Sharded layout -> host numpy with the full global batch on every host."""

    def one(x):
      if jax.process_count() > 1:
        x = multihost_utils.process_allgather(x, tiled=True)
      x = np.asarray(x)
      return x.reshape((-1,) + x.shape[2:]) if self.backend == "pmap" else x

    return jax.tree.map(one, tree)

  # -- wrapping ---------------------------------------------------------------
  def wrap(
    self, fn: Callable, in_specs: tuple, out_specs: Any, donate_argnums: tuple[int, ...] = ()
  ) -> Callable:
    """Wraps per-device ``fn`` for this backend.

    Args:
      fn: per-device function using the named axis ``self.axis_name``.
      in_specs: one of ``REPLICATED`` / ``SHARDED`` per positional argument
        (a pytree prefix of the arguments).
      out_specs: the same for the outputs.
      donate_argnums: arguments whose buffers may be reused (the train state).
    """
    if self.backend == "pmap":
      return jax.pmap(
        fn, axis_name=self.axis_name, devices=self.devices, donate_argnums=donate_argnums
      )
    to_spec = lambda s: P() if s == REPLICATED else P(self.axis_name)
    is_leaf = lambda s: isinstance(s, str)
    # check_vma=False gives the per-device function pmap's semantics. With
    # varying-manual-axes checking on, the gradient of a replicated parameter
    # is psum'd over the axis automatically, and the step's explicit pmean
    # would then scale it by the device count.
    mapped = jax.shard_map(
      fn,
      mesh=self.mesh,
      in_specs=jax.tree.map(to_spec, in_specs, is_leaf=is_leaf),
      out_specs=jax.tree.map(to_spec, out_specs, is_leaf=is_leaf),
      check_vma=False,
    )
    return jax.jit(mapped, donate_argnums=donate_argnums)


DISTRIBUTED_MODES = ("auto", "on", "off")


def distributed_requested(cfg, environ=None) -> bool:
  """Whether this process is one of several and must join a distributed run.

  Args:
    cfg: the config's ``parallel`` block (``distributed``,
      ``coordinator_address``).
    environ: the environment (``os.environ`` by default).

  ``'on'`` / ``'off'`` decide outright. ``'auto'`` joins when a coordinator
  is configured (``parallel.coordinator_address`` or JAX's own
  ``JAX_COORDINATOR_ADDRESS``), when ``srun`` started this process as one of
  several tasks (``SLURM_STEP_NUM_TASKS`` > 1; the batch script itself, a
  single task, does not count), or on a multi-host Cloud TPU slice
  (``TPU_WORKER_HOSTNAMES`` lists several workers).
  """
  environ = os.environ if environ is None else environ
  if cfg.distributed not in DISTRIBUTED_MODES:
    raise ValueError(
      f"config.parallel.distributed={cfg.distributed!r} is not valid; "
      f"choose one of: {', '.join(map(repr, DISTRIBUTED_MODES))}"
    )
  if cfg.distributed != "auto":
    return cfg.distributed == "on"
  return bool(
    cfg.coordinator_address
    or environ.get("JAX_COORDINATOR_ADDRESS")
    or int(environ.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1
    or "," in environ.get("TPU_WORKER_HOSTNAMES", "")
  )


def initialize_distributed(cfg, supervise: bool = False) -> bool:
  """Multi-host start-up from the config's ``parallel`` block, if requested.

  Must run before anything touches a JAX device. With
  ``parallel.coordinator_address`` (plus ``num_processes`` and
  ``process_id``) the run is set up explicitly, e.g. two processes on one
  machine. The coordination service's timeouts come from
  ``parallel.init_timeout_s`` / ``heartbeat_timeout_s`` / ``shutdown_timeout_s``
  (``caat_jax.multihost``). Without it ``jax.distributed.initialize()`` reads everything from
  the environment (Cloud TPU metadata, SLURM, Open MPI). On CPU, cross-process
  collectives use gloo (this JAX's default).

  ``supervise`` (the command line's entry points): first fork a parent that
  relays this process's stderr and turns the coordinator's loss, which JAX
  reports by aborting from C++, into one line and exit 75
  (``caat_jax.supervisor``).

  Returns whether distributed JAX was initialised.
  """
  if not distributed_requested(cfg):
    return False
  if supervise:
    supervisor.fork_and_relay()  # returns in the child only
  multihost.prepare()
  timeouts = multihost.initialize_kwargs(cfg)  # bounded waits on a lost host
  if cfg.coordinator_address:
    jax.distributed.initialize(
      cfg.coordinator_address,
      num_processes=cfg.num_processes if cfg.num_processes > 0 else None,
      process_id=cfg.process_id if cfg.process_id >= 0 else None,
      **timeouts,
    )
  else:
    jax.distributed.initialize(**timeouts)
  multihost.start_watch(cfg)  # a lost peer: one line and exit 75, not a hang
  supervisor.report(jax.process_index(), jax.process_count())
  return True
