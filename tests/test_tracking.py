"""wandb runs (real wandb, offline): every param in the config, named and grouped by the DVC
experiment, the same run resumed after a kill (#17.19)."""

from __future__ import annotations

import dataclasses

from recomil.pipeline import train_stage
from recomil.training.tracking import Tracker
from tests.conftest import prepare_demo


def test_runs_carry_every_param_and_the_experiment_name(project, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "sharp-tau")
    t = Tracker(None, mode="offline", project="p", name="train-fold0", group="recomil",
                config={"lr": 0.1, "outlier_alpha_high": 0.3}, wandb_dir=project, run_id="abc123")
    try:
        assert t.run.name == "sharp-tau/train-fold0" and t.run.group == "sharp-tau/recomil"
        assert t.run.config["outlier_alpha_high"] == 0.3 and t.run.config["dvc_experiment"] == "sharp-tau"
        assert t.run.id == "abc123"
    finally:
        t.finish()


def test_a_resumed_training_continues_the_same_wandb_run(project, tiny_params, monkeypatch):
    p = dataclasses.replace(tiny_params, wandb_mode="offline")
    prepare_demo(p)
    ids = []
    original = Tracker.__init__

    def record(self, *a, **k):
        original(self, *a, **k)
        if self.run is not None and k.get("job_type", "train") == "train":
            ids.append((self.run.id, dict(self.run.config)))

    monkeypatch.setattr(Tracker, "__init__", record)

    class Killed(Exception):
        pass

    log_epoch = Tracker.log_epoch

    def dies(self, row):
        log_epoch(self, row)
        if row["epoch"] == 2:
            raise Killed

    monkeypatch.setattr(Tracker, "log_epoch", dies)
    try:
        train_stage.run_train(p, progress=False)
    except Killed:
        pass
    monkeypatch.setattr(Tracker, "log_epoch", log_epoch)
    train_stage.run_train(p, progress=False)
    assert len(ids) == 2 and ids[0][0] == ids[1][0]
    assert ids[0][1]["num_protos_high"] == p.num_protos_high and ids[0][1]["fold"] == 0
