"""End to end: the real `dvc repro` in a temporary git repository, with tiny params."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY

pytestmark = pytest.mark.slow


def _run(cmd, cwd, env):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout + res.stderr


def _ran(output):
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture
def repo(tmp_path):
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    dest = tmp_path / "proj"
    for f in files:
        if f == "dvc.lock" or not (REPO / f).is_file():
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params.update({**TINY, "wandb_mode": "offline"})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "WANDB_SILENT": "true", "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        _run(cmd, dest, env)
    return dest, env


def test_repro_noop_and_experiments(repo):
    dest, env = repo
    out = _run(["dvc", "repro"], dest, env)
    assert _ran(out) == {"check_params", "scan", "ingest", "split", "prototypes@high", "prototypes@low", "train",
                         "evaluate"}
    assert json.loads((dest / "results/metrics.json").read_text())["loc_auc"] is not None  # demo truth kept
    metrics = json.loads((dest / "results/metrics.json").read_text())
    assert {"auc", "acc", "balanced_acc", "f1"} <= set(metrics)
    assert list((dest / "wandb").glob("offline-run-*"))
    _run(["git", "add", "-A"], dest, env)
    _run(["git", "commit", "-qm", "baseline"], dest, env)

    assert _ran(_run(["dvc", "repro"], dest, env)) == {"scan"}  # the input scan runs every time, alone

    out = _run(["dvc", "exp", "run", "-S", "outlier_alpha_high=0.3"], dest, env)
    assert _ran(out) == {"check_params", "scan", "train", "evaluate"}  # both cheap; check_params reads every key
    out = _run(["dvc", "exp", "run", "-S", "num_protos_low=16"], dest, env)
    assert _ran(out) == {"check_params", "scan", "prototypes@low", "train", "evaluate"}
    diff = _run(["dvc", "metrics", "diff", "--all", "--json"], dest, env)
    assert "results/metrics.json" in diff and "auc" in diff
    shown = _run(["dvc", "plots", "show", "--json"], dest, env)
    assert "roc.csv" in shown and "confusion.csv" in shown and "train_log" in shown
    assert "val_auc" in shown and "val_acc" in shown and '"lr"' in shown

    # a mistyped key fails `dvc repro` and `dvc exp run -S +key=...`, naming it and the closest key
    before = (dest / "results/metrics.json").read_text()
    res = subprocess.run(["dvc", "exp", "run", "-S", "+outlier_alpha_hgh=0.3"], cwd=dest, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode != 0
    assert "'outlier_alpha_hgh' (did you mean 'outlier_alpha_high'?)" in res.stdout + res.stderr
    assert _ran(res.stdout + res.stderr) <= {"check_params", "scan"} and "ingest" not in res.stdout
    _run(["git", "checkout", "params.yaml"], dest, env)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump({**params, "patiense": 3}, sort_keys=False))
    res = subprocess.run(["dvc", "repro"], cwd=dest, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode != 0 and "'patiense' (did you mean 'patience'?)" in res.stdout + res.stderr
    assert (dest / "results/metrics.json").read_text() == before


def test_bad_input_fails_the_stage_with_one_clear_line(repo):
    dest, env = repo
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params.update({"dataset": "folder", "root_dir_high": str(dest / "nowhere"), "labels_csv": str(dest / "x.csv")})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    res = subprocess.run([sys.executable, "stages/ingest.py"], cwd=dest, env=env, capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("error: ingest:")
    assert "x.csv" in res.stderr and "Traceback" not in res.stderr
    assert not (dest / "data/store").exists()


def test_sweep_with_the_experiment_queue(repo):
    dest, env = repo
    for alpha in ("0.1", "0.4"):
        _run(["dvc", "exp", "run", "--queue", "-S", f"outlier_alpha_high={alpha}", "-n", f"alpha-{alpha}"], dest, env)
    # The queue's workers are forked from `dvc queue start` and inherit its stdout and stderr: with pipes
    # (capture_output) the call would return only when the workers exit, i.e. after the whole sweep.
    log = dest.parent / "queue_start.log"
    with log.open("w") as fh:
        res = subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=dest, env=env, stdout=fh,
                             stderr=subprocess.STDOUT, timeout=300)
    assert res.returncode == 0, log.read_text()
    deadline = time.time() + 1800
    while time.time() < deadline:
        status = _run(["dvc", "queue", "status"], dest, env)
        if not any(word in status for word in ("Running", "Queued")):
            break
        time.sleep(5)
    assert not any(word in status for word in ("Running", "Queued")), f"the sweep did not end in 30 min:\n{status}"
    assert "Failed" not in status, status
    out = _run(["dvc", "exp", "show", "--json"], dest, env)
    text = json.dumps(json.loads(out[out.index("["):out.rindex("]") + 1]))
    for alpha in ("alpha-0.1", "alpha-0.4"):
        assert alpha in text
    assert text.count('"auc"') >= 2


def test_changed_files_outside_the_project_rerun_ingest(repo, tmp_path):
    """#17.7: slides added to an external feature folder, or labels edited in place, re-run ingest."""
    import numpy as np

    dest, env = repo
    feats = tmp_path / "external" / "features"
    feats.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = []
    for i in range(12):
        np.save(feats / f"b{i}.npy", rng.normal(size=(20, 16)).astype(np.float32) + (i % 2))
        labels.append(f"b{i},{i % 2}")
    (tmp_path / "external" / "labels.csv").write_text("slide_id,label\n" + "\n".join(labels) + "\n")
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params.update({"dataset": "folder", "root_dir_high": str(feats), "epochs": 2, "wandb_mode": "disabled",
                   "labels_csv": str(tmp_path / "external/labels.csv")})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["dvc", "repro"], dest, env)
    assert "ingest" not in _ran(_run(["dvc", "repro"], dest, env))
    np.save(feats / "b12.npy", rng.normal(size=(20, 16)).astype(np.float32))
    with open(tmp_path / "external" / "labels.csv", "a") as fh:
        fh.write("b12,1\n")
    out = _run(["dvc", "repro"], dest, env)
    assert {"scan", "ingest"} <= _ran(out)
    assert json.loads((dest / "data/inputs.json").read_text())["files"] == 14
    # #17.13: a user cohort's pipeline has no demo stage, and nothing writes or reads demo files
    dag = _run(["dvc", "dag"], dest, env)
    assert "ingest" in dag and "demo" not in dag
    assert not (dest / "data" / "demo").exists() and not (dest / "data" / "store" / "ground_truth").exists()


def _user_cohort(root: Path) -> dict:
    """A small user cohort (``folder`` preset): 24 slides of 20-40 patches, 8 features."""
    import numpy as np

    rng = np.random.default_rng(0)
    feats = root / "feats"
    feats.mkdir(parents=True)
    rows = ["Slide_ID,Label"]
    for i in range(24):
        x = rng.normal(size=(int(rng.integers(20, 40)), 8)).astype(np.float32)
        x[:3] += 4 * (i % 2)
        np.save(feats / f"{i:04d}.npy", x)
        rows.append(f"{i:04d},{i % 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return {"dataset": "folder", "root_dir_high": str(feats), "labels_csv": str(root / "labels.csv"),
            "root_dir_low": "", "val_split": 0.25}


def test_a_sweep_on_a_users_cohort_from_a_fresh_clone(repo, tmp_path):
    """The README's sweep on a user's cohort in a fresh clone whose committed dvc.lock is the demo's
    (no cache of it): two queued experiments with -j 1, then two with -j 2, all succeed with metrics of
    their own; a failed experiment would show no other run's metrics."""
    dest, env = repo
    _run(["dvc", "repro"], dest, env)  # the demo, committed as the project ships it
    _run(["git", "add", "-A"], dest, env)
    _run(["git", "commit", "-qm", "demo"], dest, env)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(dest), str(clone)], tmp_path, env)
    # a fresh clone's demo ingest and split give exactly the hashes the committed dvc.lock records
    out = _run(["dvc", "repro", "split"], clone, env)
    assert {"ingest", "split"} <= _ran(out)
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    committed = yaml.safe_load((dest / "dvc.lock").read_text())["stages"]
    for stage in ("ingest", "split"):
        assert lock[stage]["outs"] == committed[stage]["outs"], stage
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params.update(_user_cohort(tmp_path / "user"))
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "commit", "-qam", "my cohort"], clone, env)
    for jobs, alphas in ((1, ("0.1", "0.4")), (2, ("0.2", "0.3"))):
        for a in alphas:
            _run(["dvc", "exp", "run", "--queue", "-S", f"outlier_alpha_high={a}"], clone, env)
        _run(["dvc", "queue", "start", "-j", str(jobs)], clone, env)
        for _ in range(180):
            if not any(s in _run(["dvc", "queue", "status"], clone, env) for s in ("Running", "Queued")):
                break
            time.sleep(5)
    status = _run(["dvc", "queue", "status"], clone, env)
    assert "Failed" not in status and status.count("Success") == 4, status
    res = subprocess.run(["dvc", "exp", "show", "--json"], cwd=clone, env=env, capture_output=True, text=True)
    shown = json.loads(res.stdout)
    runs = [e for rev in shown for exp in (rev.get("experiments") or []) for e in exp["revs"]]
    assert len(runs) == 4
    for r in runs:
        data = r["data"]
        metrics = data["metrics"]["results/metrics.json"]["data"]
        assert metrics["n_test"] != 24 and "loc_auc" not in metrics  # the user's test slides, not the demo's
        assert data["params"]["params.yaml"]["data"]["dataset"] == "folder"
    assert len({r["data"]["params"]["params.yaml"]["data"]["outlier_alpha_high"] for r in runs}) == 4
