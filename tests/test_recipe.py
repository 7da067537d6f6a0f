"""The training recipe's parts (issue #31): optimiser, clipping, bag order and steps, instance
dropout, and the per-epoch diagnostics with the collapse warning."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from recomil.config import make_params
from recomil.pipeline import paths, train_stage
from recomil.training.batching import drop_instances, epoch_order, step_groups
from recomil.training.diagnostics import COLLAPSE_EPOCHS, CollapseWatch, StepStats, validation_row
from recomil.training.optim import build_optimizer, clip_gradients
from tests.conftest import prepare_demo


def test_adamw_decouples_the_weight_decay_and_adam_couples_it():
    """With a zero loss gradient, AdamW shrinks a weight by lr * wd * w; Adam feeds wd * w through its
    normalisation, which moves the weight by about lr whatever its size."""
    moved = {}
    for name in ("adam", "adamw"):
        w = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            w.weight.fill_(2.0)
        opt = build_optimizer(w, make_params({"optimizer": name, "lr": 0.01, "weight_decay": 0.1}))
        w.weight.grad = torch.zeros_like(w.weight)
        opt.step()
        moved[name] = 2.0 - float(w.weight.detach())
    assert moved["adamw"] == pytest.approx(0.01 * 0.1 * 2.0, rel=1e-4)
    assert moved["adam"] == pytest.approx(0.01, rel=1e-3)


def test_clipping_rescales_to_the_norm_and_reports_the_norm_before():
    w = torch.nn.Linear(2, 1, bias=False)
    for max_norm, after in ((1.0, 1.0), (0.0, 5.0), (10.0, 5.0)):
        w.weight.grad = torch.tensor([[3.0, 4.0]])
        before = clip_gradients(w, max_norm)
        assert float(before) == pytest.approx(5.0)
        assert float(w.weight.grad.norm()) == pytest.approx(after, rel=1e-5)


def test_bag_order_shuffle_visits_every_bag_once_and_balanced_draws_classes_equally():
    labels = np.array([0] * 90 + [1] * 10)
    order = epoch_order("shuffle", labels, np.random.default_rng(0))
    assert sorted(order) == list(range(100))
    draws = np.concatenate([epoch_order("balanced", labels, np.random.default_rng(s)) for s in range(50)])
    share = labels[draws].mean()
    assert len(draws) == 5000 and 0.46 < share < 0.54
    assert set(draws[labels[draws] == 1]) == set(range(90, 100))  # every minority bag drawn


def test_step_groups_cut_the_order_into_steps_of_bags_per_step():
    groups = step_groups(np.arange(7), 3)
    assert [g.tolist() for g in groups] == [[0, 1, 2], [3, 4, 5], [6]]
    assert len(step_groups(np.arange(7), 1)) == 7


def test_instance_dropout_keeps_a_share_of_the_patches_and_at_least_one():
    torch.manual_seed(0)
    bag = {"high": torch.arange(10000.0)[:, None], "low": torch.zeros(1, 3)}
    assert drop_instances(bag, 0.0) is bag
    out = drop_instances(bag, 0.5)
    assert 4700 < out["high"].shape[0] < 5300 and out["low"].shape[0] == 1
    kept = out["high"][:, 0]
    assert torch.equal(kept, torch.sort(kept).values)  # the patches kept, in their order
    assert drop_instances({"high": torch.ones(3, 2)}, 0.999999)["high"].shape[0] >= 1


def test_step_stats_average_the_norms_count_clipped_steps_and_the_true_class_probability():
    st = StepStats(2, torch.device("cpu"))
    for norm in (0.5, 2.0, 4.0):
        st.step(torch.tensor(norm), 1.0)
    st.bag(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
    st.bag(torch.tensor([[np.log(3.0), 0.0]]), torch.tensor([0]))
    st.bag(torch.tensor([[0.0, np.log(4.0)]]), torch.tensor([1]))
    row = st.row(["normal", "tumor"])
    assert row["grad_norm_mean"] == pytest.approx(6.5 / 3) and row["grad_norm_max"] == 4.0
    assert row["clipped_share"] == pytest.approx(2 / 3)
    assert row["train_ptrue_normal"] == pytest.approx(0.75) and row["train_ptrue_tumor"] == pytest.approx(0.65)
    v = validation_row(np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]]), np.array([0, 1, 1]), ["normal", "tumor"])
    assert v == pytest.approx({"val_ptrue_normal": 0.9, "val_ptrue_tumor": 0.45, "val_pred_normal": 2 / 3,
                               "val_pred_tumor": 1 / 3})


def test_the_collapse_watch_warns_once_per_stretch_of_one_class_after_warm_up(capsys):
    one = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    mixed = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    watch = CollapseWatch("fold 2", first_epoch=4, classes=["normal", "tumor"])
    for e in range(1, 4):  # warm-up: never counted
        watch.epoch(e, one)
    assert capsys.readouterr().err == ""
    for e in range(4, 4 + COLLAPSE_EPOCHS - 1):
        watch.epoch(e, one)
    assert capsys.readouterr().err == ""  # not yet enough epochs in a row
    watch.epoch(4 + COLLAPSE_EPOCHS - 1, one)
    watch.epoch(4 + COLLAPSE_EPOCHS, one)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fold 2" in err[0] and "'normal'" in err[0] and f"epochs 4-{3 + COLLAPSE_EPOCHS}" in err[0]
    watch.epoch(10, mixed)
    for e in range(11, 11 + COLLAPSE_EPOCHS):
        watch.epoch(e, one[:, ::-1])
    assert "'tumor'" in capsys.readouterr().err
    assert watch.spans() == [[4, 4 + COLLAPSE_EPOCHS], [11, 10 + COLLAPSE_EPOCHS]]
    resumed = CollapseWatch("fold 2", 4, ["normal", "tumor"])
    resumed.load(watch.state())
    assert resumed.spans() == watch.spans()


def test_a_collapsing_run_is_named_in_the_log_the_summary_and_the_curves(project, tiny_params, capsys):
    """A tiny cohort trained at a learning rate far too high for it, one bag per clipped step: every
    validation slide ends predicted as one class; the warning names the fold and epochs, the summary
    keeps them, and the per-epoch log and PNG carry the diagnostics."""
    p = dataclasses.replace(tiny_params, epochs=8, warmup_epochs=1, freeze_protos_epochs=1, lr=0.5,
                            weight_decay=0.0, save_policy="last", val_split=0.5, label_smoothing=0.0,
                            instance_stream=False, inst_on="tokens", inst_init="none")  # the recipe before #31
    prepare_demo(p)
    capsys.readouterr()
    summary = train_stage.run_train(p, progress=False)["folds"][0]
    err = capsys.readouterr().err
    assert summary["collapsed_epochs"], err
    first, last = summary["collapsed_epochs"][0]
    assert "fold 0: every validation slide predicted" in err and f"epochs {first}-" in err
    log = pd.read_csv(paths.TRAIN_LOG / "fold_0.csv")
    for col in ("grad_norm_mean", "grad_norm_max", "clipped_share", "train_ptrue_normal", "train_ptrue_tumor",
                "val_ptrue_normal", "val_ptrue_tumor", "val_pred_normal", "val_pred_tumor"):
        assert col in log.columns
    assert (log["grad_norm_max"] >= log["grad_norm_mean"]).all() and log["clipped_share"].between(0, 1).all()
    assert log.loc[log["epoch"].between(first, last), ["val_pred_normal", "val_pred_tumor"]].max(axis=1).eq(1).all()
    png = paths.TRAIN_CURVES / "fold_0.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_collapse_warning_stays_silent_on_the_defaults(project, tiny_params, capsys):
    """A small cohort (24 slides, 18 to train on) at the defaults' recipe (the fitted linear instance head's
    top patch as the slide's log-odds): no epoch predicts one class for every validation slide, and no
    warning. (On 6 training slides, too few for the fit's cross-fitting, it does collapse.)"""
    p = dataclasses.replace(tiny_params, epochs=8, warmup_epochs=1, freeze_protos_epochs=1, save_policy="last",
                            demo_train_slides=24, val_split=0.25)
    prepare_demo(p)
    capsys.readouterr()
    summary = train_stage.run_train(p, progress=False)["folds"][0]
    err = capsys.readouterr().err
    assert summary["collapsed_epochs"] == [] and "every validation slide predicted" not in err
    log = pd.read_csv(paths.TRAIN_LOG / "fold_0.csv")
    assert (log[["val_pred_normal", "val_pred_tumor"]].max(axis=1) < 1).all()


def test_bags_per_step_takes_one_optimiser_step_per_group_of_bags(project, tiny_params):
    """With bags_per_step equal to the training set, an epoch is one step: its single gradient norm is
    both the mean and the max; with 1, the steps differ."""
    p = dataclasses.replace(tiny_params, epochs=2, warmup_epochs=1, freeze_protos_epochs=1)
    prepare_demo(p)
    n_train = len(__import__("json").loads(paths.SPLIT.read_text())["folds"][0]["train"])
    train_stage.run_train(dataclasses.replace(p, bags_per_step=n_train), progress=False)
    log = pd.read_csv(paths.TRAIN_LOG / "fold_0.csv")
    assert np.allclose(log["grad_norm_mean"], log["grad_norm_max"])
    train_stage.run_train(p, progress=False)
    log = pd.read_csv(paths.TRAIN_LOG / "fold_0.csv")
    assert (log["grad_norm_max"] > log["grad_norm_mean"] * 1.0001).all()


def test_instance_loss_negative_slides_push_every_patch_down_positive_slides_only_their_top_patches():
    from recomil.training.instance_loss import instance_loss

    s = torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0, 0.0, 1.0, -0.5, 0.2, 0.1], requires_grad=True)
    neg = instance_loss(s, positive=False, top_p=0.2)
    assert float(neg.detach()) == pytest.approx(float(torch.nn.functional.softplus(s.detach()).mean()), rel=1e-6)
    (g,) = torch.autograd.grad(neg, s)
    assert (g > 0).all()  # every patch of a negative slide pushed down
    pos = instance_loss(s, positive=True, top_p=0.2)  # k = floor(10 * 0.2) = 2: the patches scoring 3.0 and 2.0
    assert float(pos.detach()) == pytest.approx(float(torch.nn.functional.softplus(-s.detach()[[3, 0]]).mean()),
                                                rel=1e-6)
    (g,) = torch.autograd.grad(pos, s)
    assert set(torch.nonzero(g).flatten().tolist()) == {0, 3} and (g[[0, 3]] < 0).all()
    assert float(instance_loss(s.detach()[:3], positive=True, top_p=0.01)) == pytest.approx(
        float(torch.nn.functional.softplus(-s.detach()[0])), rel=1e-6)  # at least one patch


def test_lambda_inst_adds_the_instance_loss_to_training_and_is_refused_beyond_two_classes(project, tiny_params):
    p = dataclasses.replace(tiny_params, epochs=2, warmup_epochs=1, freeze_protos_epochs=1, lambda_inst=0.5)
    prepare_demo(p)
    train_stage.run_train(p, progress=False)
    log = pd.read_csv(paths.TRAIN_LOG / "fold_0.csv")
    ortho = sum(0.02 * log[f"ortho_{s}"] for s in ("high", "low"))
    assert np.allclose(log["loss"], log["ce"] + ortho + 0.5 * log["inst"], atol=1e-5)
    assert (log["inst"] > 0).all()
    from recomil.inference import load_model

    model, _, _ = load_model(paths.MODELS / "fold_0" / "best.pt")
    assert all(b.instance_head is not None for b in model.branches.values())
    three = dataclasses.replace(p, num_classes=3)
    from recomil.data.errors import DataError
    from recomil.data.store import FeatureStore
    from recomil.training import trainer

    store = FeatureStore(paths.STORE)
    store.classes = ["a", "b", "c"]
    with pytest.raises(DataError, match="lambda_inst is 0.5, instance_stream True, inst_init misvm, "
                                             "but the instance-level parts need two classes"):
        trainer.train_fold(three, store, json.loads(paths.SPLIT.read_text())["folds"][0],
                           train_stage.load_prototypes(store.scales, 0), project / "m", project / "r.pt",
                           trainer.Tracker(None, mode="disabled", project="x", name="x", group="x", config={}))


def test_a_checkpoint_written_before_lambda_inst_existed_loads_without_an_instance_head(project, tiny_params):
    from recomil.inference import load_model
    from recomil.model import build_model

    p = dataclasses.replace(tiny_params, feat_dim_high=16, feat_dim_low=None, lambda_inst=0.0, instance_stream=False,
                            inst_init="none")
    model = build_model(p)  # a model of the time: no instance head
    later = ("lambda_inst", "inst_top_p", "instance_stream", "stream_weight", "inst_on", "inst_lr", "inst_init",
             "inst_init_start", "inst_init_folds", "inst_init_refits", "inst_init_head", "inst_init_c",
             "inst_init_rows")
    old = {k: v for k, v in p.to_dict().items() if k not in later}
    torch.save({"state_dict": model.state_dict(), "params": old, "classes": ["a", "b"]}, project / "old.pt")
    loaded, q, _ = load_model(project / "old.pt")
    assert q.lambda_inst == 0 and loaded.branches["high"].instance_head is None


def test_instance_stream_averages_the_heads_log_odds_with_the_top_patch_logit():
    from recomil.model import build_model

    base = {"feat_dim_high": 8, "feat_dim_low": None, "num_protos_high": 16, "embed_dim_high": 16, "lambda_inst": 1.0,
            "inst_on": "tokens", "inst_init": "none", "stream_weight": 0.5}
    torch.manual_seed(0)
    two = build_model(make_params({**base, "instance_stream": True})).eval()
    one = build_model(make_params({**base, "instance_stream": False})).eval()
    one.load_state_dict(two.state_dict())
    x = torch.randn(30, 8)
    with torch.no_grad():
        a, b = two(x), one(x)
    head, top = b["logits"][0], b["instance_logits_high"].max()
    assert torch.allclose(a["logits"][0], torch.stack([head[0] / 2, (head[1] + top) / 2]), atol=1e-6)
    assert torch.equal(a["instance_logits_high"], b["instance_logits_high"])
    with pytest.raises(ValueError, match="instance_stream needs two classes"):
        build_model(make_params({**base, "instance_stream": True, "num_classes": 3}))
    # without the instance-level loss the stream's head is trained by the slide loss alone
    alone = build_model(make_params({**base, "instance_stream": True, "lambda_inst": 0.0}))
    assert alone.branches["high"].instance_head is not None


def test_an_instance_head_on_the_input_is_linear_in_the_standardised_features():
    from recomil.model import build_model

    p = make_params({"feat_dim_high": 8, "feat_dim_low": None, "num_protos_high": 16, "embed_dim_high": 16,
                     "inst_on": "input", "instance_stream": True})
    torch.manual_seed(0)
    model = build_model(p, input_stats={"high": (torch.full((8,), 0.5), torch.full((8,), 2.0))}).eval()
    head = model.branches["high"].instance_head
    assert head.in_features == 8
    x = torch.randn(20, 8)
    with torch.no_grad():
        got = model(x)["instance_logits_high"]
    assert torch.allclose(got, head((x - 0.5) / 2.0).squeeze(-1), atol=1e-6)


def test_inst_lr_gives_the_instance_head_its_own_rate_outside_the_clipped_norm():
    from recomil.model import build_model
    from recomil.training.optim import build_optimizer, clip_gradients, instance_head_params

    base = {"feat_dim_high": 8, "feat_dim_low": None, "num_protos_high": 16, "embed_dim_high": 16,
            "inst_on": "input", "instance_stream": True}
    torch.manual_seed(0)
    model = build_model(make_params(base))
    assert build_optimizer(model, make_params(base)).param_groups[0]["base_lr"] == 1e-4
    assert len(build_optimizer(model, make_params(base)).param_groups) == 1  # inst_lr 0: one group, as before
    opt = build_optimizer(model, make_params({**base, "inst_lr": 1e-2}))
    head = instance_head_params(model)
    assert [g["base_lr"] for g in opt.param_groups] == [1e-4, 1e-2]
    assert {id(q) for q in opt.param_groups[1]["params"]} == {id(q) for q in head} and len(head) == 2
    for q in model.parameters():
        q.grad = torch.full_like(q, 3.0)
    rest = [q for q in model.parameters() if all(q is not h for h in head)]
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(q.grad) for q in rest]))
    norm = clip_gradients(model, 1.0, opt)
    assert torch.allclose(norm, expected)
    assert all(torch.equal(h.grad, torch.full_like(h, 3.0)) for h in head)  # not clipped
    got = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(q.grad) for q in rest]))
    assert torch.allclose(got, torch.tensor(1.0), atol=1e-5)
    from recomil.config import ConfigError

    with pytest.raises(ConfigError, match="inst_lr"):
        make_params({"inst_lr": -1.0})


@pytest.mark.parametrize("w", [1.0, 0.25])
def test_stream_weight_mixes_the_top_patch_into_the_slides_log_odds(w):
    from recomil.model import build_model

    base = {"feat_dim_high": 8, "feat_dim_low": None, "num_protos_high": 16, "embed_dim_high": 16, "drop": 0.0,
            "inst_on": "input", "instance_stream": True}
    torch.manual_seed(0)
    half = build_model(make_params({**base, "stream_weight": 0.5})).eval()
    torch.manual_seed(0)
    mixed = build_model(make_params({**base, "stream_weight": w})).eval()
    x = torch.randn(30, 8)
    with torch.no_grad():
        a, b = half(x), mixed(x)
    top = a["instance_logits_high"].max()
    head = torch.stack([a["logits"][0, 0] * 2, a["logits"][0, 1] * 2 - top])  # the attention head's logits
    odds = b["logits"][0, 1] - b["logits"][0, 0]
    assert torch.allclose(odds, (1 - w) * (head[1] - head[0]) + w * top, atol=1e-5)
    from recomil.config import ConfigError

    with pytest.raises(ConfigError, match="stream_weight"):
        make_params({"stream_weight": 0.0})


def test_patch_evidence_is_the_instance_heads_probability_under_the_stream_else_the_attention():
    """Heatmaps, galleries and loc_auc show what decides the slide: with the instance stream its patch
    probability (whose top patch is the slide's log-odds), without it the attention weight."""
    from recomil.inference import predict_bags
    from recomil.model import build_model

    base = {"feat_dim_high": 8, "feat_dim_low": None, "num_protos_high": 16, "embed_dim_high": 16, "drop": 0.0}
    x = torch.randn(25, 8)
    for stream in (True, False):
        torch.manual_seed(0)
        model = build_model(make_params({**base, "instance_stream": stream})).eval()
        _, extras = predict_bags(model, [{"high": x}])
        with torch.no_grad():
            out = model(x)
        want = torch.sigmoid(out["instance_logits_high"]) if stream else out["attention_high"]
        assert np.allclose(extras[0]["evidence_high"], want.numpy(), atol=1e-6)
        assert np.allclose(extras[0]["attention_high"], out["attention_high"].numpy(), atol=1e-6)


def _full_pass(monkeypatch) -> None:
    """Make every branch run its full forward pass in training, as before the shortcut."""
    from recomil.model.branch import ReCoBranch

    monkeypatch.setattr(ReCoBranch, "attention_unused", property(lambda self: False))


def test_training_skips_the_attention_head_when_the_top_patch_alone_is_the_slides_log_odds(monkeypatch):
    """stream_weight 1 with an input-level instance head: the attention head's logits enter the slide's
    log-odds multiplied by 0. Training's forward pass then skips it: the same logits and instance logits
    as the full pass (one bag, and padded bags with a mask), the same gradient on the instance head, and
    no gradient on the rest (the full pass gives it exactly 0)."""
    from recomil.model import build_model

    base = {"feat_dim_high": 8, "feat_dim_low": 6, "num_protos_high": 16, "num_protos_low": 8,
            "embed_dim_high": 16, "embed_dim_low": 16, "inst_on": "input", "instance_stream": True}
    torch.manual_seed(0)
    model = build_model(make_params(base)).train()
    assert all(b.attention_unused for b in model.branches.values())
    for other in ({"stream_weight": 0.5}, {"inst_on": "tokens", "inst_init": "none"}, {"instance_stream": False}):
        assert not build_model(make_params({**base, **other})).branches["high"].attention_unused
    bags = [(torch.randn(30, 8) * 2, torch.randn(9, 6)), (torch.randn(21, 8), torch.randn(5, 6) + 1)]
    padded_high, padded_low = torch.zeros(2, 30, 8), torch.zeros(2, 9, 6)
    mask_high, mask_low = torch.zeros(2, 30, dtype=torch.bool), torch.zeros(2, 9, dtype=torch.bool)
    for i, (h, lo) in enumerate(bags):
        padded_high[i, :len(h)], padded_low[i, :len(lo)] = h, lo
        mask_high[i, :len(h)], mask_low[i, :len(lo)] = True, True
    padded_high[1, 21:] = 50.0  # padding the mask must keep out of the top patch
    calls = [lambda: model(*bags[0]), lambda: model(*bags[1]),
             lambda: model(padded_high, padded_low, mask_high=mask_high, mask_low=mask_low)]
    head = [q for b in model.branches.values() for q in b.instance_head.parameters()]
    rest = [q for n, q in model.named_parameters() if "instance_head" not in n and not n.startswith("fusion")]

    def run(call):
        model.zero_grad(set_to_none=True)
        out = call()
        (out["logits"][:, 1] - 0.3 * out["logits"][:, 0]).sum().backward()
        return out, [q.grad.clone() for q in head], [q.grad for q in rest]

    short = [run(c) for c in calls]
    _full_pass(monkeypatch)
    full = [run(c) for c in calls]
    for (a, ga, ra), (b, gb, rb) in zip(short, full):
        assert torch.equal(a["logits"], b["logits"]) and a["logits"].shape == b["logits"].shape
        for s in ("high", "low"):
            assert torch.equal(a[f"instance_logits_{s}"], b[f"instance_logits_{s}"])
        assert all(torch.equal(x, y) for x, y in zip(ga, gb))
        assert all(g is None for g in ra) and all(g is None or not g.any() for g in rb)
    assert short[2][0]["logits"][1, 1] < 50  # the padded rows are not the second bag's top patch
    assert torch.equal(short[2][0]["logits"][1], short[1][0]["logits"][0])


def test_training_with_the_shortcut_gives_the_full_passs_run_bitwise(project, tiny_params, monkeypatch):
    """At the defaults (stream_weight 1, inst_on input) a whole training with the shortcut logs the same
    losses, gradient norms and validation figures, bitwise, and keeps the same instance heads, as one
    that runs the attention head it does not use."""
    p = dataclasses.replace(tiny_params, epochs=4, demo_train_slides=24)
    prepare_demo(p)
    runs = []
    for full in (False, True):
        if full:
            _full_pass(monkeypatch)
        train_stage.run_train(p, progress=False)
        state = torch.load(paths.MODELS / "fold_0" / "best.pt", weights_only=True)
        weights = state["state_dict"]
        runs.append((pd.read_csv(paths.TRAIN_LOG / "fold_0.csv"),
                     {k: v for k, v in weights.items() if "instance_head" in k or k.startswith("fusion")}))
    (log_a, heads_a), (log_b, heads_b) = runs
    for col in ("ce", "inst", "grad_norm_mean", "grad_norm_max", "val_loss", "val_auc"):
        assert np.array_equal(log_a[col].to_numpy(), log_b[col].to_numpy()), col
    assert heads_a.keys() == heads_b.keys() and len(heads_a) >= 5
    assert all(torch.equal(heads_a[k], heads_b[k]) for k in heads_a)
