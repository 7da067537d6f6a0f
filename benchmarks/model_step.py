"""One training step (forward, backward, Adam) of a dual-scale bag: time and peak memory.

Usage: python benchmarks/model_step.py [--sizes 1000 4000 16000 64000] [--device cpu|cuda]
       [--out benchmarks/model_step.md]
       benchmarks/bf16_threshold.sh   # small bags: where bf16 stops paying on a CPU (amp: auto)

Each (size, precision) runs in a fresh subprocess so that its peak memory is its own (resident
memory on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA). D = 768, K = 128,
N_low = N_high / 4, default params otherwise; the step is the trainer's (fused Adam, the gradient
scaler with fp16). Precisions: fp32 and bf16, and fp16 on CUDA. Also measured: the agreement of
the low-precision and fp32 predictions on one fixed bag (eval mode), and the step on a bag of
100,000 high + 25,000 low patches with and without activation checkpointing of the enhancers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _one(n: int, amp: str, repeats: int, ckpt: int, device: str, dim: int = 768) -> dict:
    import recomil

    torch.manual_seed(0)
    model = recomil.build_model({"feat_dim_high": dim, "feat_dim_low": dim}).to(device)
    for branch in model.branches.values():
        branch.checkpoint_min_patches = ckpt
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    dtype = DTYPES[amp]
    scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
    xh, xl = torch.randn(n, dim, device=device), torch.randn(n // 4, dim, device=device)
    y = torch.tensor([1], device=device)
    model.train()
    model.set_prototypes_frozen(False)
    times = []
    for _ in range(repeats + 1):
        _sync(device)
        t = time.perf_counter()
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(xh, xl)
        loss = torch.nn.functional.cross_entropy(out["logits"].float(), y) + sum(model.ortho_losses().values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        _sync(device)
        times.append(time.perf_counter() - t)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n": n, "amp": amp, "seconds": min(times[1:]), "peak_mb": peak}


def _varying(amp: str, device: str) -> dict:
    """Two epochs over 50 bags of 50 distinct sizes (300-790 high patches): the step time of the
    second epoch and the peak memory, which grows with the distinct shapes oneDNN caches in bf16."""
    import recomil

    torch.manual_seed(0)
    model = recomil.build_model({"feat_dim_high": 768, "feat_dim_low": 768}).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    dtype = DTYPES[amp]
    bags = [(torch.randn(n, 768, device=device), torch.randn(n // 4, 768, device=device))
            for n in range(300, 800, 10)]
    y = torch.tensor([1], device=device)
    for _ in range(2):
        _sync(device)
        t = time.perf_counter()
        for xh, xl in bags:
            with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
                out = model(xh, xl)
            loss = torch.nn.functional.cross_entropy(out["logits"].float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        seconds = (time.perf_counter() - t) / len(bags)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"amp": amp, "cache": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"), "seconds": seconds,
            "peak_mb": peak}


def _agreement(device: str, amp: str) -> float:
    import recomil

    torch.manual_seed(0)
    model = recomil.build_model({"feat_dim_high": 768, "feat_dim_low": 768}).to(device).eval()
    xh, xl = torch.randn(4000, 768, device=device), torch.randn(1000, 768, device=device)
    with torch.no_grad():
        p32 = torch.softmax(model(xh, xl)["logits"], -1)
        with torch.autocast(device, dtype=DTYPES[amp]):
            p16 = torch.softmax(model(xh, xl)["logits"].float(), -1)
    return float((p32 - p16).abs().max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 4000, 16000, 64000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/model_step.md")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--large", type=int, default=100000, help="the checkpointing comparison's bag (0: skip)")
    ap.add_argument("--dim", type=int, default=768, help="feature width D of the step's bags")
    ap.add_argument("--no-varying", action="store_true", help="skip the bags-of-varied-size comparison")
    ap.add_argument("--child", nargs=3, default=None)
    ap.add_argument("--varying-child", default=None)
    args = ap.parse_args()
    if args.varying_child:
        print(json.dumps(_varying(args.varying_child, args.device)))
        return
    if args.child:
        n, amp, ckpt = int(args.child[0]), args.child[1], int(args.child[2])
        print(json.dumps(_one(n, amp, 1 if n >= 64000 and args.device == "cpu" else args.repeats, ckpt,
                              args.device, args.dim)))
        return
    rows = []
    precisions = ("fp32", "bf16", "fp16") if args.device == "cuda" else ("fp32", "bf16")
    plan = [(n, amp, 16384) for n in args.sizes for amp in precisions]
    if args.large:
        plan += [(args.large, "fp32", 16384), (args.large, "fp32", 10**9)]
    for n, amp, ckpt in plan:
        res = subprocess.run([sys.executable, __file__, "--child", str(n), amp, str(ckpt), "--repeats",
                              str(args.repeats), "--device", args.device, "--dim", str(args.dim)],
                             capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row["checkpointing"] = n >= ckpt
        rows.append(row)
        print(row, flush=True)
    varying = []
    compare_varying = args.device == "cpu" and not args.no_varying
    for amp, cache in [("fp32", None), ("bf16", None), ("bf16", "1024")] if compare_varying else []:
        env = dict(os.environ, **({"ONEDNN_PRIMITIVE_CACHE_CAPACITY": cache} if cache else {}))
        res = subprocess.run([sys.executable, __file__, "--varying-child", amp, "--device", args.device],
                             capture_output=True, text=True, check=True, env=env)
        varying.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(varying[-1], flush=True)
    diffs = {amp: _agreement(args.device, amp) for amp in precisions[1:]}
    if args.device == "cuda":
        where = f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}"
        mem = "peak GPU memory allocated (MB)"
    else:
        where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        mem = "peak RSS (MB)"
    cmd = shlex.join(["python", "benchmarks/model_step.py", *sys.argv[1:]])
    lines = [f"# Model training step (dual scale, D = {args.dim}, K = 128, N_low = N_high / 4)", "",
             f"Command: `{cmd}` ({time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {where}).", "",
             f"| N_high | precision | activation checkpointing | step (s) | {mem} |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['amp']} | {'yes' if r['checkpointing'] else 'no'} | {r['seconds']:.3f} | "
                     f"{r['peak_mb']:.0f} |")
    by = {(r["n"], r["amp"], r["checkpointing"]): r["seconds"] for r in rows}
    for amp in precisions[1:]:
        lines += ["", f"{amp} / fp32 step-time ratio: " + ", ".join(
            f"N={n}: {by[(n, amp, n >= 16384)] / by[(n, 'fp32', n >= 16384)]:.2f}" for n in args.sizes)]
        lines += ["", f"Largest |p_{amp} - p_fp32| of the class probabilities on a fixed 4,000 + 1,000 patch bag "
                  f"(eval): {diffs[amp]:.2e}"]
    if varying:
        lines += ["", "Bags of varied size (two epochs over 50 bags of 300-790 high-magnification patches, "
                  "D = 768; step time of the second epoch, peak RSS; `cache`: oneDNN's primitive cache "
                  "capacity, 16 as recomil sets it unless the environment says otherwise, 1024 oneDNN's own "
                  "default):", "", "| precision | cache | step (s) | peak RSS (MB) |", "| --- | --- | --- | --- |"]
        lines += [f"| {v['amp']} | {v['cache'] if v['amp'] == 'bf16' else '-'} | {v['seconds']:.3f} | "
                  f"{v['peak_mb']:.0f} |" for v in varying]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
