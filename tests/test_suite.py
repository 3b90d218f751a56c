"""The suite's own set-up (tests/conftest.py)."""

import os
from pathlib import Path

import torch
from conftest import LONGEST_FIRST, _cores, suite_threads

HERE = Path(__file__).resolve().parent


def test_the_files_handed_out_first_exist():
    """A renamed or removed file in LONGEST_FIRST would silently stop being handed out first."""
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
    assert [n for n in LONGEST_FIRST if not (HERE / n).is_file()] == []


def test_suite_threads_an_override_else_a_workers_share_of_the_cores():
    assert suite_threads({"SSA_RVOS_TEST_THREADS": "3", "PYTEST_XDIST_WORKER_COUNT": "2"}) == 3
    assert suite_threads({"PYTEST_XDIST_WORKER_COUNT": "1"}) == _cores()
    assert suite_threads({"PYTEST_XDIST_WORKER_COUNT": "2"}) == max(1, _cores() // 2)
    assert suite_threads({"PYTEST_XDIST_WORKER_COUNT": str(4 * _cores())}) == 1  # never 0
    assert suite_threads({}) is None
    threads = suite_threads(os.environ)  # and this run's (under the README's command, xdist's share)
    assert threads is None or torch.get_num_threads() == threads
