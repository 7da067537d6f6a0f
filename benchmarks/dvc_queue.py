"""Queued experiments on one machine: wall time of N experiments under ``dvc queue start -j J``.

Usage::

    python benchmarks/dvc_queue.py                         # N = 1, 2, 4 with -j 1 and -j 2 (demo params)
    python benchmarks/dvc_queue.py --counts 2 --jobs 1 2 --set epochs=3   # a quick look

A copy of the project (its git-tracked files, the demo params) is made a git repository in a
temporary folder; ``dvc repro`` runs once, so that each queued experiment (``-S
outlier_alpha_high=<value>``) re-runs ``train`` and ``evaluate`` only. For each N and J the
experiments are queued, ``dvc queue start -j J`` starts them, and the wall time until the queue is
empty is recorded, with the torch threads each training took (from its log). Two trainings
that both use every core slow each other many-fold; with the thread share (``threads: 0``)
``-j 2`` should take about the time of ``-j 1`` or less. Run it alone: it measures the machine.
Writes ``benchmarks/dvc_queue.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from recomil.config import ConfigError, parse_overrides  # noqa: E402


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return res.stdout + res.stderr


def make_repo(root: Path, overrides: dict[str, object]) -> tuple[Path, dict[str, str]]:
    """A git repository with the project's tracked files and ``overrides`` in params.yaml."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    dest = root / "proj"
    for f in files:
        if f == "dvc.lock" or not (REPO / f).is_file() or f.startswith(("data/", "results/")):
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params.update({"wandb_mode": "disabled", **overrides})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "WANDB_SILENT": "true", "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
    env.pop("OMP_NUM_THREADS", None)  # the thread share decides
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        _run(cmd, dest, env)
    return dest, env


def run_queue(dest: Path, env: dict[str, str], n: int, jobs: int, tag: int) -> dict[str, object]:
    """Queue ``n`` experiments, run them with ``-j jobs``; wall time and each one's threads."""
    names = [f"q{tag}-{i}" for i in range(n)]
    for i, name in enumerate(names):
        _run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"outlier_alpha_high={0.1 + 0.05 * (tag + i):.3f}"],
             dest, env)
    started = time.perf_counter()
    # its output to a file, not pipes: the queue's forked workers inherit them, so a captured call would
    # return only when the last experiment ended (the loop below is what waits for them)
    with open(dest.parent / f"queue-start-{tag}.log", "w") as log:
        res = subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=dest, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
    if res.returncode != 0:
        raise RuntimeError(f"dvc queue start failed:\n{(dest.parent / f'queue-start-{tag}.log').read_text()[-2000:]}")
    while True:
        time.sleep(5)
        status = _run(["dvc", "queue", "status"], dest, env)
        if not any(word in status for word in ("Running", "Queued")):
            break
    seconds = time.perf_counter() - started
    if "Failed" in status:
        raise RuntimeError(f"a queued experiment failed:\n{status}")
    threads = []
    for name in names:  # the train stage prints its thread count
        log = _run(["dvc", "queue", "logs", name], dest, env)
        threads += [int(line.split("torch thread")[0].split()[-1]) for line in log.splitlines()
                    if "torch thread" in line]
    _run(["dvc", "exp", "remove", *names], dest, env)
    return {"n": n, "jobs": jobs, "seconds": round(seconds, 1), "threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--set", nargs="*", default=[], help="params for every experiment, key=value (YAML values)")
    ap.add_argument("--out", type=Path, default=HERE / "dvc_queue.md")
    args = ap.parse_args()
    try:
        overrides = parse_overrides(args.set)
    except ConfigError as e:
        ap.error(str(e))
    rows = []
    with tempfile.TemporaryDirectory(prefix="recomil-queue-") as tmp:
        dest, env = make_repo(Path(tmp), overrides)
        t = time.perf_counter()
        _run(["dvc", "repro"], dest, env)
        base = time.perf_counter() - t
        _run(["git", "add", "-A"], dest, env)
        _run(["git", "commit", "-qm", "baseline"], dest, env)
        tag = 0
        for n in args.counts:
            for jobs in args.jobs:
                row = run_queue(dest, env, n, jobs, tag)
                tag += n
                rows.append(row)
                print(json.dumps(row), flush=True)
    by = {(r["n"], r["jobs"]): r["seconds"] for r in rows}
    lines = ["# Queued experiments: `dvc queue start -j J` on one machine", "",
             f"Command: `{' '.join(['python benchmarks/dvc_queue.py', *sys.argv[1:]])}` "
             f"({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {platform.machine()}). Each experiment "
             f"re-runs `train` and `evaluate` of the demo (`-S outlier_alpha_high=...`); the first `dvc repro` "
             f"took {base:.0f} s. `threads`: the torch threads each training took (`threads: 0`).", "",
             "| experiments | -j | wall time (s) | per experiment (s) | threads | vs -j 1 |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ref = by.get((r["n"], 1))
        lines.append(f"| {r['n']} | {r['jobs']} | {r['seconds']:.0f} | {r['seconds'] / r['n']:.0f} | "
                     f"{', '.join(map(str, r['threads'])) or '-'} | {r['seconds'] / ref:.2f} |" if ref else
                     f"| {r['n']} | {r['jobs']} | {r['seconds']:.0f} | {r['seconds'] / r['n']:.0f} | "
                     f"{', '.join(map(str, r['threads'])) or '-'} | - |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
