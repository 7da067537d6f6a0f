"""Per-epoch logging to a DVC plot file (CSV) and to wandb (offline by default)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any


def experiment_name() -> str:
    """The DVC experiment being run (``dvc exp run`` sets ``DVC_EXP_NAME``), else ``workspace``."""
    return os.environ.get("DVC_EXP_NAME") or "workspace"


class Tracker:
    """Writes per-epoch rows to ``csv_path`` and mirrors them to a wandb run.

    wandb runs with ``mode`` offline (default: no account, no network), online or disabled; its
    files go under ``wandb_dir``.
    """

    def __init__(self, csv_path: str | Path | None, *, mode: str, project: str, name: str, group: str,
                 config: dict[str, Any], wandb_dir: str | Path = ".", job_type: str = "train",
                 run_id: str | None = None) -> None:
        """``name`` and ``group`` are prefixed with the DVC experiment (``DVC_EXP_NAME``, which
        ``dvc exp run`` sets), so runs of different experiments are told apart and grouped; a
        ``run_id`` derived from what the run depends on makes a resumed training continue the
        same wandb run instead of starting a new one with half the history."""
        self.csv_path = Path(csv_path) if csv_path else None
        self.rows: list[dict[str, Any]] = []
        self.run = None
        if mode != "disabled":
            import wandb

            exp = experiment_name()
            Path(wandb_dir).mkdir(parents=True, exist_ok=True)
            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(project=project, name=f"{exp}/{name}", group=f"{exp}/{group}", job_type=job_type,
                                  config={**config, "dvc_experiment": exp}, mode=mode, dir=str(wandb_dir),
                                  reinit="finish_previous", id=run_id, resume="allow" if run_id else None)

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Append one epoch's figures (CSV row and wandb step)."""
        self.rows.append(row)
        if self.csv_path is not None:
            self.write_csv()
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if v is not None}, step=int(row["epoch"]))

    def write_csv(self) -> None:
        """Rewrite the CSV from all rows (so a resumed run keeps one header)."""
        assert self.csv_path is not None
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        with open(self.csv_path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})

    def log(self, values: dict[str, Any]) -> None:
        """Log free-form values (metrics, plots, images) to wandb only."""
        if self.run is not None:
            self.run.log(values)

    def image(self, key: str, path: str | Path) -> None:
        """Log a picture file to wandb only."""
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path))})

    def summary(self, values: dict[str, Any]) -> None:
        """Set run summary values."""
        if self.run is not None:
            for k, v in values.items():
                if v is not None:
                    self.run.summary[k] = v

    def artifact(self, name: str, kind: str, path: str | Path) -> None:
        """Log a file as a wandb artifact."""
        if self.run is not None:
            import wandb

            art = wandb.Artifact(name, type=kind)
            art.add_file(str(path))
            self.run.log_artifact(art)

    def finish(self) -> None:
        """Close the wandb run."""
        if self.run is not None:
            self.run.finish()
            self.run = None
