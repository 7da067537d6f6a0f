"""One training step (forward, backward, Adam) of a dual-scale bag: time and peak memory.

Usage: python benchmarks/model_step.py [--sizes 1000 4000 16000 64000] [--out benchmarks/model_step.md]

Each (size, precision) runs in a fresh subprocess so that its peak resident memory (ru_maxrss)
is its own. D = 768, K = 128, N_low = N_high / 4, default params otherwise. Also measured: the
agreement of bf16 and fp32 predictions on one fixed bag (eval mode), and the step on a bag of
100,000 high + 25,000 low patches with and without activation checkpointing of the enhancers.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch


def _one(n: int, amp: str, repeats: int, ckpt: int) -> dict:
    import recomil

    torch.manual_seed(0)
    model = recomil.build_model({"feat_dim_high": 768, "feat_dim_low": 768})
    for branch in model.branches.values():
        branch.checkpoint_min_patches = ckpt
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    xh, xl = torch.randn(n, 768), torch.randn(n // 4, 768)
    y = torch.tensor([1])
    dtype = torch.bfloat16 if amp == "bf16" else None
    model.train()
    model.set_prototypes_frozen(False)
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(xh, xl)
        loss = torch.nn.functional.cross_entropy(out["logits"].float(), y) + sum(model.ortho_losses().values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n": n, "amp": amp, "seconds": min(times[1:]), "peak_mb": peak}


def _agreement() -> float:
    import recomil

    torch.manual_seed(0)
    model = recomil.build_model({"feat_dim_high": 768, "feat_dim_low": 768}).eval()
    xh, xl = torch.randn(4000, 768), torch.randn(1000, 768)
    with torch.no_grad():
        p32 = torch.softmax(model(xh, xl)["logits"], -1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            p16 = torch.softmax(model(xh, xl)["logits"].float(), -1)
    return float((p32 - p16).abs().max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000, 64000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/model_step.md")
    ap.add_argument("--child", nargs=3, default=None)
    args = ap.parse_args()
    if args.child:
        n, amp, ckpt = int(args.child[0]), args.child[1], int(args.child[2])
        print(json.dumps(_one(n, amp, 1 if n >= 64000 else args.repeats, ckpt)))
        return
    rows = []
    plan = [(n, amp, 16384) for n in args.sizes for amp in ("fp32", "bf16")]
    plan += [(100000, "fp32", 16384), (100000, "fp32", 10**9)]
    for n, amp, ckpt in plan:
        res = subprocess.run([sys.executable, __file__, "--child", str(n), amp, str(ckpt), "--repeats",
                              str(args.repeats)], capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row["checkpointing"] = n >= ckpt
        rows.append(row)
        print(row, flush=True)
    diff = _agreement()
    lines = ["# Model training step (dual scale, D = 768, K = 128, N_low = N_high / 4)", "",
             f"Command: `python benchmarks/model_step.py` ({time.strftime('%Y-%m-%d')}, torch {torch.__version__}, "
             f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads).", "",
             "| N_high | precision | activation checkpointing | step (s) | peak RSS (MB) |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['amp']} | {'yes' if r['checkpointing'] else 'no'} | {r['seconds']:.3f} | "
                     f"{r['peak_mb']:.0f} |")
    by = {(r["n"], r["amp"], r["checkpointing"]): r["seconds"] for r in rows}
    lines += ["", "bf16 / fp32 step-time ratio: " + ", ".join(
        f"N={n}: {by[(n, 'bf16', n >= 16384)] / by[(n, 'fp32', n >= 16384)]:.2f}" for n in args.sizes)]
    lines += ["", "Largest |p_bf16 - p_fp32| of the class probabilities on a fixed 4,000 + 1,000 patch bag "
              f"(eval): {diff:.2e}"]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
