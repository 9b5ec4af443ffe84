"""Joining a multi-process JAX job: TPU pods, Slurm and Open MPI jobs, or explicit addresses.

Every process of a job runs the same ``launch.py`` command. Before any JAX computation,
:func:`initialize` connects the processes through ``jax.distributed.initialize``; afterwards
``jax.devices()`` lists the devices of *all* processes, the trainer's 1-D ``data`` mesh spans them,
and each process feeds only its own rows of every global batch (the ``host`` input pipeline, chosen
automatically when ``jax.process_count() > 1``). Process 0 writes the metrics; orbax checkpoints
are collective (every process calls save and restore, the primary process writes the metadata).

When to initialise (``mode``):

* ``auto`` (default): when explicit arguments are given, or when the environment says this process
  is one of several: a Slurm job step with more than one task, an Open MPI job with more than one
  rank, or a Cloud TPU VM (where JAX reads the pod's workers from the TPU metadata; on a
  single-host TPU VM that is a one-process job, which is harmless). A plain ``python launch.py``
  on a workstation initialises nothing: one process, all its local devices.
* ``on``: always; JAX fills in whatever is not given from the environment (e.g. ``mpi4py``).
* ``off``: never.
"""

from __future__ import annotations

import os

import jax
from absl import logging

MODES = ('auto', 'on', 'off')

# The variables JAX's own Slurm detection reads (jax/_src/clusters/slurm_cluster.py); inside
# ``sbatch`` but outside ``srun`` SLURM_STEP_NODELIST is unset and the script is a single process.
_SLURM_VARIABLES = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
                    'SLURM_LOCALID')
_TPU_POD_VARIABLES = ('TPU_WORKER_HOSTNAMES', 'TPU_PROCESS_ADDRESSES')


def _count(variable: str) -> int:
    try:
        return int(os.environ.get(variable, '1'))
    except ValueError:
        return 1


def _on_cloud_tpu_vm() -> bool:
    """Whether ``import jax`` found TPU chips and libtpu here (a Cloud TPU VM)."""
    try:
        from jax._src import cloud_tpu_init
    except ImportError:  # a JAX without the module: fall back to the environment variables
        return False
    return bool(getattr(cloud_tpu_init, 'running_in_cloud_tpu_vm', False))


def detect_cluster() -> str | None:
    """The multi-process launcher this process runs under (``slurm``, ``ompi``, ``tpu``) or None.

    Only launchers that start several processes count: a one-task Slurm job is a plain run.
    """
    if all(name in os.environ for name in _SLURM_VARIABLES) and _count('SLURM_NTASKS') > 1:
        return 'slurm'
    if 'OMPI_MCA_orte_hnp_uri' in os.environ and _count('OMPI_COMM_WORLD_SIZE') > 1:
        return 'ompi'
    if any(',' in os.environ.get(name, '') for name in _TPU_POD_VARIABLES) \
            or _count('MEGASCALE_NUM_SLICES') > 1 or _on_cloud_tpu_vm():
        return 'tpu'
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, mode: str = 'auto') -> bool:
    """Starts JAX's multi-process runtime when this process is one of several; returns whether.

    Must run before anything touches a JAX backend (``jax.devices()``, any computation).

    Args:
      coordinator_address: ``host:port`` of process 0, reachable from every process; process 0
        listens on that port.
      num_processes: number of processes in the job.
      process_id: this process's index, ``0 <= process_id < num_processes``.
      mode: ``auto``, ``on`` or ``off`` (module docstring).

    Raises:
      ValueError: for inconsistent arguments, before anything is started.
    """
    if mode not in MODES:
        raise ValueError(f'unknown distributed mode {mode!r}; allowed: {", ".join(MODES)}')
    explicit = {'coordinator_address': coordinator_address, 'num_processes': num_processes,
                'process_id': process_id}
    given = {name for name, value in explicit.items() if value is not None}
    if mode == 'off':
        if given:
            raise ValueError(f'--distributed=off contradicts --{", --".join(sorted(given))}')
        return False
    cluster = detect_cluster()
    if mode == 'auto' and not given and cluster is None:
        return False
    if given and cluster is None and len(given) < len(explicit):
        missing = sorted(set(explicit) - given)
        raise ValueError(f'several processes need --{", --".join(missing)} too: no Slurm, MPI or '
                         'TPU environment to take them from')
    if num_processes is not None and num_processes < 1:
        raise ValueError(f'num_processes must be >= 1, got {num_processes}')
    if process_id is not None and num_processes is not None \
            and not 0 <= process_id < num_processes:
        raise ValueError(f'process_id must be in [0, {num_processes}), got {process_id}')
    # CPU-only processes need cross-process collectives; gloo is JAX's default, but an older
    # default was none at all, which fails at the first psum across processes.
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    logging.info('jax.distributed.initialize(%s) via %s', explicit, cluster or 'arguments')
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return True
