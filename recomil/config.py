"""One place that turns the flat ``params.yaml`` into typed, validated settings.

Every key of ``params.yaml`` is a field of :class:`Params` with its default; an unknown key is an
error (a typo must not silently fall back to a default). Per-scale keys follow the original's
naming, ``<name>_high`` / ``<name>_low``; :meth:`Params.scale` gathers them into a
:class:`ScaleParams` so the code loops over scales instead of keeping a high and a low copy.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

SCALES: tuple[str, ...] = ("high", "low")

DATASETS = ("demo", "c16", "c17", "tcga", "folder")
SIMILARITIES = ("l2", "cosine", "dot")
FUSIONS = ("learned", "confidence", "fixed")
SAVE_POLICIES = ("val_auc", "val_acc", "joint", "val_loss", "train_loss", "last")
TIE_BREAKS = ("val_loss", "none")
PATIENCE_ON = ("selection", "score")
ENSEMBLE_VALS = ("resplit", "shared")
OPTIMIZERS = ("adam", "adamw")
SAMPLERS = ("shuffle", "balanced")
INST_ON = ("tokens", "input")
INST_INITS = ("none", "misvm")
INST_INIT_STARTS = ("auto", "novelty", "bags")
INST_INIT_HEADS = ("bagged", "full")
BAG_BATCHING = ("auto", "padded", "accumulate")
DEVICE_FEATURES = ("auto", "on", "off")
ENSEMBLE_PROTOS = ("shared", "resample")
AMP_MODES = ("auto", "bf16", "fp16", "off")
WANDB_MODES = ("offline", "online", "disabled")
MODELS = ("recomil", "abmil")
STORE_DTYPES = ("float16", "float32")
NONFINITE = ("error", "drop")
KMEANS_ALGORITHMS = ("lloyd", "minibatch")


#: the data keys each ``dataset`` preset reads; any other of them set is an error (a user who
#: forgets ``-S dataset=folder`` must not train on the demo without a word)
DATASET_KEYS: dict[str, tuple[str, ...]] = {
    "demo": (),
    "c16": ("root_dir_high", "root_dir_low", "train_list", "test_csv"),
    "c17": ("root_dir_high", "root_dir_low", "ids_file", "labels_npy"),
    "tcga": ("train_csv", "luad_dir", "lusc_dir"),
    "folder": ("root_dir_high", "root_dir_low", "labels_csv"),
}


class ConfigError(ValueError):
    """A parameter is unknown, has the wrong type, or holds a value out of range."""


@dataclass(frozen=True)
class ScaleParams:
    """The settings of one magnification branch (the ``*_high`` or ``*_low`` keys)."""

    name: str
    feat_dim: int | None
    num_protos: int
    embed_dim: int
    similarity_method: str
    route_topk: int
    hard: bool
    use_graph_reducer: bool
    graph_thresh: float
    tau_start: float
    tau_end: float
    tau_epochs: int
    outlier_top_p: float
    outlier_alpha: float
    gate_in_embed: bool
    rare_beta: float
    lambda_ortho: float


@dataclass(frozen=True)
class Params:
    """All pipeline settings; field names are the ``params.yaml`` keys."""

    # data / ingest
    dataset: str = "demo"
    root_dir_high: str = ""
    root_dir_low: str = ""
    train_list: str = ""
    test_csv: str = ""
    ids_file: str = ""
    labels_npy: str = ""
    train_csv: str = ""
    luad_dir: str = ""
    lusc_dir: str = ""
    labels_csv: str = ""
    feat_dim_high: int | None = None
    feat_dim_low: int | None = None
    store_dtype: str = "float16"
    on_nonfinite: str = "error"
    patch_size_level0: float = 0.0
    patch_size_level0_low: float = 0.0
    # demo cohort
    demo_seed: int = 7
    demo_train_slides: int = 40
    demo_test_slides: int = 24
    demo_feat_dim: int = 64
    demo_min_patches: int = 200
    demo_max_patches: int = 700
    demo_tumour_min: float = 0.005
    demo_tumour_max: float = 0.10
    demo_sites: int = 3
    # split
    seed: int = 2025
    val_split: float = 0.1
    no_val: bool = False
    test_split: float = 0.2
    folds: int = 0
    # prototypes
    num_protos_high: int = 128
    num_protos_low: int = 128
    kmeans_batch_size: int = 4096
    kmeans_max_iter: int = 200
    kmeans_sample_ratio: float = 1.0
    kmeans_max_per_slide: int = 0
    kmeans_algorithm: str = "lloyd"
    kmeans_lloyd_rows: int = 65536
    standardize: bool = True
    # model
    model: str = "recomil"
    embed_dim_high: int = 512
    embed_dim_low: int = 512
    num_enhancers: int = 3
    drop: float = 0.25
    similarity_method_high: str = "l2"
    similarity_method_low: str = "l2"
    route_topk_high: int = 3
    route_topk_low: int = 3
    hard_high: bool = False
    hard_low: bool = False
    use_graph_reducer_high: bool = False
    use_graph_reducer_low: bool = False
    graph_thresh_high: float = 0.15
    graph_thresh_low: float = 0.15
    tau_start_high: float = 1.2
    tau_start_low: float = 1.2
    tau_end_high: float = 0.7
    tau_end_low: float = 0.7
    tau_epochs_high: int = 35
    tau_epochs_low: int = 35
    outlier_top_p_high: float = 0.015
    outlier_top_p_low: float = 0.015
    outlier_alpha_high: float = 0.2
    outlier_alpha_low: float = 0.2
    gate_in_embed_high: bool = False
    gate_in_embed_low: bool = False
    gate_at_eval: bool = False
    rare_beta_high: float = 0.3
    rare_beta_low: float = 0.3
    lambda_ortho_high: float = 0.02
    lambda_ortho_low: float = 0.02
    ortho_on_projected: bool = False
    fusion: str = "learned"
    alpha_init: float = 0.5
    recalibrate: bool = True
    use_low_scale: bool = True
    # training
    epochs: int = 50
    lr: float = 1e-4
    weight_decay: float = 5e-4
    warmup_epochs: int = 12
    freeze_protos_epochs: int = 12
    label_smoothing: float = 0.03
    class_weight: bool = False
    grad_clip: float = 1.0
    optimizer: str = "adam"
    bags_per_step: int = 1
    bag_batching: str = "auto"
    length_buckets: int = 8
    device_features: str = "auto"
    resume_every_s: float = 60.0
    sampler: str = "shuffle"
    instance_dropout: float = 0.0
    lambda_inst: float = 1.0
    inst_top_p: float = 0.01
    instance_stream: bool = True
    stream_weight: float = 1.0
    inst_on: str = "input"
    inst_lr: float = 0.0
    inst_init: str = "misvm"
    inst_init_start: str = "auto"
    inst_init_folds: int = 3
    inst_init_refits: int = 20
    inst_init_pick_folds: int = 3
    inst_init_head: str = "full"
    inst_init_warm_start: bool = False
    inst_init_c: float = 0.01
    inst_init_rows: int = 100000
    patience: int = 10
    early_stop_after_warmup: bool = True
    min_delta: float = 0.0
    save_policy: str = "joint"
    tie_break: str = "val_loss"
    patience_on: str = "score"
    select_after_warmup: bool = True
    ensemble: int = 1
    ensemble_val: str = "resplit"
    ensemble_protos: str = "shared"
    ema_epochs: float = 0.0
    snapshots: int = 1
    amp: str = "auto"
    nproc: int = 1
    threads: int = 0
    wandb_mode: str = "offline"
    wandb_project: str = "recomil"
    # evaluation
    bootstrap: int = 1000
    slides_dir: str = ""
    heatmap_topk: int = 12
    # derived (not in params.yaml; filled from the data by the stages or by callers)
    num_classes: int = 2

    def scale(self, name: str) -> ScaleParams:
        """Gather the ``*_{name}`` keys of one scale (``high`` or ``low``)."""
        if name not in SCALES:
            raise ConfigError(f"unknown scale {name!r}; expected one of {SCALES}")
        values = {f.name: getattr(self, f"{f.name}_{name}") for f in fields(ScaleParams) if f.name != "name"}
        return ScaleParams(name=name, **values)

    @property
    def scales(self) -> tuple[str, ...]:
        """Scales in use: both, or ``("high",)`` when the low scale has no features or is switched off."""
        return SCALES if self.feat_dim_low is not None and self.use_low_scale else ("high",)

    def to_dict(self) -> dict[str, Any]:
        """The flat key/value form (as in ``params.yaml``, plus derived keys)."""
        return dataclasses.asdict(self)


_DERIVED = {"num_classes"}
_CHOICES = {
    "dataset": DATASETS,
    "similarity_method_high": SIMILARITIES,
    "similarity_method_low": SIMILARITIES,
    "fusion": FUSIONS,
    "save_policy": SAVE_POLICIES,
    "tie_break": TIE_BREAKS,
    "patience_on": PATIENCE_ON,
    "ensemble_val": ENSEMBLE_VALS,
    "ensemble_protos": ENSEMBLE_PROTOS,
    "amp": AMP_MODES,
    "optimizer": OPTIMIZERS,
    "sampler": SAMPLERS,
    "inst_on": INST_ON,
    "inst_init": INST_INITS,
    "inst_init_start": INST_INIT_STARTS,
    "inst_init_head": INST_INIT_HEADS,
    "bag_batching": BAG_BATCHING,
    "device_features": DEVICE_FEATURES,
    "wandb_mode": WANDB_MODES,
    "model": MODELS,
    "store_dtype": STORE_DTYPES,
    "on_nonfinite": NONFINITE,
    "kmeans_algorithm": KMEANS_ALGORITHMS,
}


def param_keys() -> list[str]:
    """The keys that ``params.yaml`` may hold."""
    return [f.name for f in fields(Params) if f.name not in _DERIVED]


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of ``default`` (ints accepted for floats)."""
    if value is None:
        if key.startswith("feat_dim_"):
            return None
        raise ConfigError(f"param {key!r} must not be empty")
    if isinstance(default, bool) or key in {"no_val", "class_weight", "gate_at_eval", "ortho_on_projected",
                                                      "early_stop_after_warmup", "standardize", "select_after_warmup",
                                                      "recalibrate", "use_low_scale", "instance_stream"}:
        if not isinstance(value, bool):
            raise ConfigError(f"param {key!r} must be true or false, got {value!r}")
        return value
    if key.startswith("feat_dim_") or isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"param {key!r} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"param {key!r} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"param {key!r} must be a string, got {value!r}")
        return value
    return value


def _validate(p: Params) -> None:
    for key, choices in _CHOICES.items():
        if getattr(p, key) not in choices:
            raise ConfigError(f"param {key!r} is {getattr(p, key)!r}; expected one of {', '.join(choices)}")
    positive = ["epochs", "num_enhancers", "num_protos_high", "num_protos_low", "embed_dim_high",
                "embed_dim_low", "kmeans_batch_size", "kmeans_max_iter", "num_classes", "nproc",
                "kmeans_lloyd_rows", "bags_per_step", "length_buckets"]
    for key in positive:
        if getattr(p, key) < 1:
            raise ConfigError(f"param {key!r} must be at least 1, got {getattr(p, key)}")
    for key in ["val_split", "test_split", "drop", "label_smoothing", "instance_dropout"]:
        if not 0.0 <= getattr(p, key) < 1.0:
            raise ConfigError(f"param {key!r} must lie in [0, 1), got {getattr(p, key)}")
    if not 0.0 < p.kmeans_sample_ratio <= 1.0:
        raise ConfigError(f"param 'kmeans_sample_ratio' must lie in (0, 1], got {p.kmeans_sample_ratio}")
    if p.folds == 1 or p.folds < 0:
        raise ConfigError(f"param 'folds' must be 0 (the dataset's own split) or at least 2, got {p.folds}")
    if not (math.isfinite(p.lambda_inst) and p.lambda_inst >= 0):
        raise ConfigError(f"param 'lambda_inst' must be 0 (off) or a positive weight, got {p.lambda_inst}")
    if not 0.0 < p.stream_weight <= 1.0:
        raise ConfigError(f"param 'stream_weight' must lie in (0, 1] (the top patch's share of the slide's log-odds "
                          f"with instance_stream), got {p.stream_weight}")
    if not (math.isfinite(p.resume_every_s) and p.resume_every_s >= 0):
        raise ConfigError(f"param 'resume_every_s' must be 0 (a resume file after every epoch) or a number of "
                          f"seconds, got {p.resume_every_s}")
    if not (math.isfinite(p.inst_lr) and p.inst_lr >= 0):
        raise ConfigError(f"param 'inst_lr' must be 0 (the instance head trains with lr, clipped with the model) or a "
                          f"positive learning rate, got {p.inst_lr}")
    if p.inst_init == "misvm" and p.inst_on != "input" and p.model == "recomil":
        raise ConfigError("param 'inst_init: misvm' fits the linear instance head on the input features: it needs "
                          f"inst_on: input (got inst_on: {p.inst_on}); set inst_init: none otherwise")
    if p.inst_init_refits < (0 if p.inst_init_start == "bags" else 1) or p.inst_init_rows < 1:
        raise ConfigError(f"params 'inst_init_refits' (>= 1 with inst_init_start: novelty or auto, >= 0 with bags) "
                          f"and 'inst_init_rows' (>= 1) got {p.inst_init_refits} and {p.inst_init_rows}")
    if p.inst_init_pick_folds < 1:
        raise ConfigError(f"param 'inst_init_pick_folds' must be 1 (each refit picks a slide's positives with the fit "
                          f"of every slide's, mi-SVM as published) or at least 2 (with fits that left that slide's "
                          f"positives out), got {p.inst_init_pick_folds}")
    if p.inst_init_folds < 0 or p.inst_init_folds == 1 or (p.inst_init_start == "auto" and p.inst_init_folds < 2):
        raise ConfigError(f"param 'inst_init_folds' must be 0 (no cross-fitting) or at least 2 (at least 2 with "
                          f"inst_init_start: auto), got {p.inst_init_folds}")
    if not (math.isfinite(p.inst_init_c) and p.inst_init_c > 0):
        raise ConfigError(f"param 'inst_init_c' must be a positive inverse L2 strength, got {p.inst_init_c}")
    if not 0.0 < p.inst_top_p <= 1.0:
        raise ConfigError(f"param 'inst_top_p' must lie in (0, 1] (a share of a positive slide's patches), "
                          f"got {p.inst_top_p}")
    if not (math.isfinite(p.grad_clip) and p.grad_clip >= 0):
        raise ConfigError(f"param 'grad_clip' must be 0 (no clipping) or a positive gradient norm, got {p.grad_clip}")
    if p.lr <= 0:
        raise ConfigError(f"param 'lr' must be positive, got {p.lr}")
    read = DATASET_KEYS[p.dataset]
    ignored = [k for keys in DATASET_KEYS.values() for k in keys if k not in read and getattr(p, k)]
    if ignored:
        readers = {k: [d for d, keys in DATASET_KEYS.items() if k in keys] for k in ignored}
        raise ConfigError(f"param(s) {', '.join(repr(k) for k in dict.fromkeys(ignored))} set, but dataset "
                          f"{p.dataset!r} does not read them (they are read by dataset "
                          f"{' / '.join(dict.fromkeys(d for ds in readers.values() for d in ds))}); set 'dataset' "
                          f"accordingly or clear them")
    if p.patience < 1:
        raise ConfigError(f"param 'patience' must be at least 1 (epochs without improvement before stopping), "
                          f"got {p.patience}; use save_policy: last to train every epoch")
    if not 1 <= p.ensemble <= 64:
        raise ConfigError(f"param 'ensemble' must lie in [1, 64] (models trained per fold, their test "
                          f"probabilities averaged), got {p.ensemble}")
    boundary = max(p.warmup_epochs, p.freeze_protos_epochs)
    candidates = p.epochs - boundary if p.epochs > boundary else p.epochs
    if not 1 <= p.snapshots <= candidates:
        raise ConfigError(f"param 'snapshots' must lie in [1, {candidates}] (1: off; K >= 2: the weights of K epochs "
                          f"evenly spaced over the {candidates} epochs after warm-up and prototype freezing, their "
                          f"test probabilities averaged), got {p.snapshots}")
    if p.snapshots > 1 and p.ensemble > 1:
        raise ConfigError(f"params 'snapshots' ({p.snapshots}) and 'ensemble' ({p.ensemble}) cannot both exceed 1: "
                          "both keep several models per fold; choose one")
    if not (math.isfinite(p.ema_epochs) and p.ema_epochs >= 0):
        raise ConfigError(f"param 'ema_epochs' must be 0 (off) or a positive number of epochs (the time "
                          f"constant of the weight average that is validated and saved), got {p.ema_epochs}")
    if not 0 <= p.seed < 2**32:
        raise ConfigError(f"param 'seed' must lie in [0, 2**32), got {p.seed}")
    for s in SCALES:
        if not 0.0 <= getattr(p, f"outlier_top_p_{s}") <= 1.0:
            raise ConfigError(f"param 'outlier_top_p_{s}' must lie in [0, 1] (a share of the patches), "
                              f"got {getattr(p, f'outlier_top_p_{s}')}")
        if getattr(p, f"route_topk_{s}") > getattr(p, f"num_protos_{s}"):
            raise ConfigError(f"param 'route_topk_{s}' is {getattr(p, f'route_topk_{s}')}, more than the "
                              f"{getattr(p, f'num_protos_{s}')} prototypes (num_protos_{s}); 0 routes to all")
    for key in ("patch_size_level0", "patch_size_level0_low", "heatmap_topk", "threads"):
        if getattr(p, key) < 0:
            raise ConfigError(f"param {key!r} must be 0 or positive, got {getattr(p, key)}")
    for s in SCALES:
        k = getattr(p, f"num_protos_{s}")
        if p.model == "recomil" and k < 2 ** p.num_enhancers:
            raise ConfigError(
                f"param 'num_protos_{s}' is {k}, but {p.num_enhancers} enhancer stages halve it "
                f"{p.num_enhancers} times; it must be at least {2 ** p.num_enhancers}")
        if getattr(p, f"route_topk_{s}") < 0:
            raise ConfigError(f"param 'route_topk_{s}' must be 0 (off) or positive")
        if not 0.0 <= getattr(p, f"graph_thresh_{s}") <= 1.0:
            raise ConfigError(f"param 'graph_thresh_{s}' must lie in [0, 1]")
        if getattr(p, f"tau_start_{s}") <= 0 or getattr(p, f"tau_end_{s}") <= 0:
            raise ConfigError(f"params 'tau_start_{s}' and 'tau_end_{s}' must be positive")


def make_params(values: dict[str, Any] | None = None) -> Params:
    """Build validated :class:`Params` from a flat dict; missing keys take their defaults.

    Raises:
        ConfigError: on an unknown key, a wrong type or a bad value.
    """
    values = dict(values or {})
    defaults = Params()
    known = {f.name for f in fields(Params)}
    unknown = sorted(set(values) - known)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"unknown param(s): {', '.join(hints)}; see params.yaml for the valid keys")
    kwargs = {k: _coerce(k, v, getattr(defaults, k)) for k, v in values.items()}
    p = dataclasses.replace(defaults, **kwargs)
    _validate(p)
    return p


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings, as ``dvc exp run -S`` reads them (the value as YAML: ``0.3``, ``true``,
    ``novelty``, ``""``), to a dict; each key checked against the params.

    Raises:
        ConfigError: on an item without ``=``, an unknown key or a value YAML cannot read.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. outlier_alpha_high=0.3")
        try:
            out[key] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({e})") from None
    make_params(out)  # unknown keys, wrong types and bad values refused here, by name
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key written twice in one mapping (PyYAML keeps the last
    value silently; DVC refuses such a file, so the stages run outside DVC must too)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"key {key!r} is written twice (lines {seen[key]} and {line}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | Path = "params.yaml", **overrides: Any) -> Params:
    """Read ``params.yaml`` (flat keys) and return validated :class:`Params`."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of flat keys at the top level")
    raw.update(overrides)
    try:
        return make_params(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
