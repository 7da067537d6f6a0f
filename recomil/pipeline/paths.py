"""Where each stage reads and writes, relative to the project root (mirrors ``dvc.yaml``)."""

from __future__ import annotations

from pathlib import Path

DEMO = Path("data/demo")
PARAMS_OK = Path("data/params.ok")
INPUTS = Path("data/inputs.json")
STORE = Path("data/store")
MANIFEST = Path("data/manifest.csv")
DEMO_BUILD = Path("data/.demo-cohort")
SPLIT = Path("data/split.json")
PROTOTYPES = Path("data/prototypes")
MODELS = Path("models")
RESULTS = Path("results")
TRAIN_LOG = RESULTS / "train_log"
TRAIN_CURVES = RESULTS / "train_curves"
PLOTS = RESULTS / "plots"
METRICS = RESULTS / "metrics.json"
PREDICTIONS = RESULTS / "predictions.csv"
EXPLAIN = RESULTS / "explain"
RESUME = Path(".recomil/resume")
WANDB_DIR = Path(".")


def prototype_file(scale: str, fold: int) -> Path:
    """The k-means output of one scale and fold."""
    return PROTOTYPES / scale / f"fold_{fold}.npz"
