"""tests/ranks.py: a gloo teardown abort after every rank's work is tolerated; any other is not."""

import os
import signal

import pytest
import torch.multiprocessing as mp

from .ranks import run_ranks


def _abort_at_exit(rank, world):
    if rank == 1:  # as torch 2.14's gloo sometimes does when the process tears down
        import atexit

        atexit.register(lambda: os.kill(os.getpid(), signal.SIGABRT))
    return rank * 10


def _abort_at_work(rank, world):
    if rank == 1:
        os.kill(os.getpid(), signal.SIGABRT)
    return rank


def test_an_abort_after_the_work_is_tolerated_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="teardown"):
        assert run_ranks(_abort_at_exit, 2, tmp_path) == [0, 10]


def test_an_abort_during_the_work_fails(tmp_path):
    with pytest.raises(mp.ProcessExitedException):
        run_ranks(_abort_at_work, 2, tmp_path)
