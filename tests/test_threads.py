"""Trainings on one machine share its cores (#20: parallel sweeps that do not fight over cores)."""

from __future__ import annotations

import os
import subprocess

import torch

from recomil.training.threads import ThreadShare, running_trainings


def test_each_training_takes_its_share_and_takes_the_cores_back_when_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    others = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    try:
        share = ThreadShare(0, tmp_path)
        assert share.apply() == 4 and torch.get_num_threads() == 4  # alone: every core
        for proc in others[:1]:
            (tmp_path / f"{proc.pid}.pid").touch()
        assert share.apply() == 2  # two trainings: two cores each
        (tmp_path / f"{others[1].pid}.pid").touch()
        (tmp_path / "999999999.pid").touch()  # a training that died: not counted, cleaned up
        assert share.apply() == 1 and running_trainings(tmp_path) == 3
        assert not (tmp_path / "999999999.pid").exists()
        for proc in others:
            proc.kill()
            proc.wait()
        assert share.apply() == 4
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert share.apply() == 3  # an explicit OMP_NUM_THREADS is an upper bound
        share.close()
        assert running_trainings(tmp_path) == 0
        assert ThreadShare(2, tmp_path).apply() == 2  # a fixed count
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert ThreadShare(0, tmp_path).apply(fixed=3) == 3  # a resumed run keeps its count
    finally:
        for proc in others:
            proc.kill()
        torch.set_num_threads(before)


def test_the_share_counts_the_cores_this_process_may_use_not_the_machines(tmp_path, monkeypatch):
    """A SLURM job or ``taskset`` gives a process 2 of a machine's 64 cores: its share is of those 2."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5, 9}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        share = ThreadShare(0, tmp_path)
        assert share.apply() == 2
        share.close()
    finally:
        torch.set_num_threads(before)


def test_a_training_lowers_its_count_when_a_second_one_starts_later_and_never_raises_it(tmp_path, monkeypatch):
    """dvc queue start -j 2: the second training often registers after the first chose its count."""
    from recomil.training.threads import register

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    other = subprocess.Popen(["sleep", "30"])
    try:
        assert register(tmp_path) == register(tmp_path)  # one entry per process
        share = ThreadShare(0, tmp_path)
        n = share.apply()
        assert n == 4 and share.lower(n) is None  # alone: keeps every core
        (tmp_path / f"{other.pid}.pid").touch()  # a second training registers
        assert share.lower(n) == 2 and torch.get_num_threads() == 2
        assert share.lower(2) is None
        other.kill()
        other.wait()
        assert share.lower(2) is None  # alone again: the count is not raised (the run stays reproducible)
        assert ThreadShare(1, tmp_path).lower(4) is None  # a fixed count is never changed
        share.close()
    finally:
        other.kill()
        torch.set_num_threads(before)
