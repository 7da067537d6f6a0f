"""Data-parallel training with 2 processes on CPU (gloo), launched the way `dvc repro` does."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from recomil.inference import load_model
from recomil.training.distributed import shard
from tests.conftest import REPO, TINY, prepare_demo


def test_shards_are_equal_length_and_cover_everything():
    order = np.arange(7)
    parts = [shard(order, r, 3) for r in range(3)]
    assert {len(x) for x in parts} == {3}
    assert set(np.concatenate(parts)) == set(order)
    assert np.array_equal(shard(order, 0, 1), order)


@pytest.mark.slow  # ~20 s: two training processes
def test_two_processes_keep_identical_weights_and_write_complete_outputs(project, tiny_params):
    prepare_demo(tiny_params)
    params = {**TINY, "epochs": 2, "nproc": 2, "wandb_mode": "disabled"}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "RECOMIL_CHECK_SYNC": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(REPO / "stages" / "train.py")], cwd=project, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "data-parallel over 2 processes" in res.stderr
    summary = json.loads((project / "models" / "summary.json").read_text())
    assert summary["folds"][0]["epochs_run"] == 2
    log = pd.read_csv(project / "results" / "train_log" / "fold_0.csv")
    assert list(log["epoch"]) == [1, 2]
    assert log["val_acc"].notna().all()  # validation gathered from both ranks every epoch
    assert log["val_auc"].notna().all() or not log["val_auc"].notna().any()
    model, _, _ = load_model(project / "models" / "fold_0" / "best.pt")
    with torch.no_grad():
        out = model(torch.randn(30, 16), torch.randn(8, 16))
    assert torch.isfinite(out["logits"]).all()
    assert not (project / ".recomil" / "resume" / "fold_0.pt").exists()
