"""benchmarks/fit_profile.py: it counts the fit the trainer runs, without changing it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from recomil.config import make_params
from recomil.training.bags import BagSet
from recomil.training.instance_init import init_instance_heads
from recomil.training.trainer import member_seed
from tests.conftest import REPO, TINY, prepare_demo

sys.path.insert(0, str(REPO / "benchmarks"))
import fit_profile  # noqa: E402
import recipe_epoch0  # noqa: E402


def test_the_profile_counts_every_fit_of_each_scale_and_leaves_the_heads_as_the_trainer_fits_them(project):
    params = {**TINY, "inst_on": "input", "inst_init": "misvm", "instance_stream": True, "demo_train_slides": 24}
    p = make_params(params)
    prepare_demo(p)
    Path("params.json").write_text(json.dumps(params))
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the script runs it: the cross-fitting fits one after another, counted apart
    try:
        result = fit_profile.profile(Path("."), {})
    finally:
        torch.set_num_threads(before)
    assert set(result["scales"]) == {"high", "low"}
    for scale, r in result["scales"].items():
        # auto start, 3 cross-fitting folds: two starts x three folds, then the final fit
        assert r["misvm_fits"] == 7 and len(r["rounds"]) == 7, r
        assert all(0 <= n <= p.inst_init_refits for n in r["rounds"])
        # each mi-SVM fit: three part regressions per round, the last fit, and a bag-label start's fit
        # (the three cross-fitting folds of start bags, and the final fit when bags is chosen)
        [line] = [ln for ln in result["log"] if f"instance head ({scale}) fitted by mi-SVM" in ln]
        bag_starts = 3 + ("(start: bags" in line)
        assert r["regressions"] == 3 * sum(r["rounds"]) + 7 + bag_starts
        assert 0 <= r["regression_s"] <= r["seconds"]
    # the profiled fit is the trainer's: bitwise the heads of a plain fit of fold 0
    _, store, split, mp, model = recipe_epoch0.fold0_model({})
    init_instance_heads(model, BagSet(store, split["train"], mp.scales), p, member_seed(p.seed, 0, 0), "fold 0",
                        log=lambda line: None)
    assert result["heads_sha256"] == {s: fit_profile.head_digest(model.branches[s].instance_head)
                                      for s in ("high", "low")}
