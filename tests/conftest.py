"""Shared fixtures: tiny params and a tiny demo project directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from recomil.config import make_params

TINY = {
    "demo_train_slides": 12, "demo_test_slides": 8, "demo_feat_dim": 16, "demo_min_patches": 60,
    "demo_max_patches": 120, "num_protos_high": 16, "num_protos_low": 8, "embed_dim_high": 32,
    "embed_dim_low": 32, "kmeans_max_iter": 5, "kmeans_batch_size": 256, "epochs": 3, "warmup_epochs": 1,
    "freeze_protos_epochs": 1, "tau_epochs_high": 2, "tau_epochs_low": 2, "bootstrap": 50,
    "wandb_mode": "disabled", "val_split": 0.25, "resume_every_s": 0,
}

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N (pyproject's addopts: one test process per core): the processes share the cores, so
    # each takes one thread (torch, OpenMP and BLAS); two-thread processes side by side would spin
    # against each other. Tests that study thread counts set their own.
    from threadpoolctl import threadpool_limits

    os.environ["OMP_NUM_THREADS"] = "1"
    threadpool_limits(1)


@pytest.fixture(autouse=True)
def _threads() -> None:
    # at most 2 (this machine's cores); OMP_NUM_THREADS=1 leaves the other core to a benchmark
    torch.set_num_threads(min(2, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def tiny_params():
    """Small, fast params for stage tests."""
    return make_params(TINY)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project directory as the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def prepare_demo(p) -> None:
    """Run the stages before training (demo, ingest, split, prototypes) in the working directory."""
    from recomil.pipeline import data_stages, prototypes_stage

    data_stages.run_demo(p)
    data_stages.run_ingest(p, progress=False)
    data_stages.run_split(p)
    for scale in ("high", "low"):
        prototypes_stage.run_prototypes(p, scale)
