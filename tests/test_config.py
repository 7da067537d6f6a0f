from pathlib import Path

import pytest
import yaml

from recomil.config import ConfigError, Params, load_params, make_params, param_keys, parse_overrides

REPO = Path(__file__).resolve().parents[1]


def test_params_yaml_holds_exactly_the_known_keys_with_their_defaults():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw) == set(param_keys())
    assert load_params(REPO / "params.yaml") == Params()


def test_every_param_is_declared_by_a_dvc_stage():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    declared = set()
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        if name == "check_params":  # tracks the whole file, so it re-runs on any change; checked below
            assert body["params"] == [{"params.yaml": None}]
            continue
        for key in body.get("params", []):
            declared |= {key.replace("${item}", s) for s in ("high", "low")}
    assert set(param_keys()) <= declared


def test_unknown_key_is_refused_with_the_closest_valid_key():
    with pytest.raises(ConfigError, match="'outlier_alpha_hgh' \\(did you mean 'outlier_alpha_high'\\?\\)"):
        make_params({"outlier_alpha_hgh": 0.3})


def test_overrides_read_values_as_yaml_as_dvc_exp_run_does():
    got = parse_overrides(["outlier_alpha_high=0.3", "inst_init_start=novelty", "class_weight=true",
                           "feat_dim_high=null", "slides_dir=", "tie_break=none", "epochs=7"])
    assert got == {"outlier_alpha_high": 0.3, "inst_init_start": "novelty", "class_weight": True,
                   "feat_dim_high": None, "slides_dir": "", "tie_break": "none", "epochs": 7}


@pytest.mark.parametrize("item,message", [("epochs", "expected KEY=VALUE"), ("=3", "expected KEY=VALUE"),
                                          ("epoch=3", "'epoch' \\(did you mean 'epochs'"),
                                          ("lr=[1", "not valid YAML")])
def test_a_bad_override_is_refused_by_name(item, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides([item])


@pytest.mark.parametrize("dataset,key", [("demo", "root_dir_high"), ("demo", "labels_csv"), ("folder", "test_csv"),
                                         ("tcga", "root_dir_low"), ("c16", "labels_npy")])
def test_data_keys_the_dataset_does_not_read_are_an_error(dataset, key):
    with pytest.raises(ConfigError, match=f"'{key}' set, but dataset '{dataset}' does not read"):
        make_params({"dataset": dataset, key: "/somewhere"})


@pytest.mark.parametrize("key,value", [("fusion", "mean"), ("epochs", 0), ("lr", "fast"), ("folds", 1),
                                       ("num_protos_high", 4), ("no_val", "yes"),
                                       ("ema_epochs", -1.0), ("ema_epochs", float("nan")), ("ensemble", 0),
                                       ("snapshots", 0), ("snapshots", 39)])
def test_bad_values_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        make_params({key: value})


def test_snapshots_lie_within_the_epochs_after_warm_up_and_exclude_an_ensemble():
    assert make_params({"snapshots": 38}).snapshots == 38  # epochs 13..50 of the defaults
    assert make_params({"snapshots": 3, "epochs": 3, "warmup_epochs": 5, "freeze_protos_epochs": 5}).snapshots == 3
    with pytest.raises(ConfigError, match="'snapshots' must lie in \\[1, 38\\]"):
        make_params({"snapshots": 39})
    with pytest.raises(ConfigError, match="'snapshots' \\(2\\) and 'ensemble' \\(3\\)"):
        make_params({"snapshots": 2, "ensemble": 3})


def test_scale_view_gathers_the_suffixed_keys():
    p = make_params({"outlier_alpha_low": 0.7, "feat_dim_low": 12})
    assert p.scale("low").outlier_alpha == 0.7
    assert p.scale("high").outlier_alpha == 0.2
    assert p.scales == ("high", "low")
    assert make_params({}).scales == ("high",)
