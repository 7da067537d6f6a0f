#!/usr/bin/env bash
# GPU check: on one CUDA GPU install the project, run the demo `dvc repro` on CUDA (and a short fp16
# training with the gradient scaler), the model-step benchmark on CUDA (1k-100k patches,
# fp32/bf16/fp16), the batched step (one bag per step against 4-16 padded bags per step, issue #33),
# benchmarks/vs_original.py on the CTransPath-width cohort (the original, recomil's one-bag step and
# 16 padded bags per step), and the Camelyon16-size 5-fold study (benchmarks/gpu_study.py), and
# write every figure to one Markdown file.
#
#   bash benchmarks/gpu_check.sh                                  # from the project root
#   ORIGINAL=/path/to/ReCo-MIL bash benchmarks/gpu_check.sh       # also the original code, side by side
#   WHEELS=/path/to/wheels OUT_FILE=/tmp/gpu.md bash benchmarks/gpu_check.sh   # offline machine
#
# ORIGINAL: a checkout of zsszc/ReCo-MIL kept outside the project (its units are skipped without it).
# WHEELS:   a folder of wheels (dvc and its needs) installed with --no-index, for a machine without
#           internet access; otherwise `pip install -e .` fetches what is missing.
# STEPS:    which of "demo model-step batched-step vs-original study" to run (default: all). The study
#           needs more than one call's 10 minutes the first time (its cohort, ~10 GB, is generated
#           first): it is resumable, so run it again with the same WORK:
#             WORK=/tmp/gc STEPS=study bash benchmarks/gpu_check.sh   # again until its table appears
# OUT_FILE: the report (default benchmarks/gpu_check.md). Each step has its own time limit, and a
#           step that fails is reported as failed; the script goes on with the next one.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT_FILE=${OUT_FILE:-$ROOT/benchmarks/gpu_check.md}
WORK=${WORK:-$(mktemp -d /tmp/recomil-gpu-check.XXXXXX)}
LOGS=${LOGS:-$WORK/logs}
mkdir -p "$LOGS" "$WORK/bin"
# the stages run `python`: make it the interpreter that has torch (python3), wherever `python` points
# (a wrapper, not a symbolic link: a link to a virtual environment's python loses that environment)
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" >"$WORK/bin/python"
chmod +x "$WORK/bin/python"
export PATH=$WORK/bin:$PATH
export WANDB_SILENT=true DVC_NO_ANALYTICS=1 PYTHONUNBUFFERED=1
started=$(date +%s)
STEPS=${STEPS:-demo model-step batched-step vs-original study}
wants() { [[ " $STEPS " == *" $1 "* ]]; }

say() { echo "$*" | tee -a "$OUT_FILE"; }
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $LOGS/NAME.log, report the outcome
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s) rc
  timeout "$limit" bash -c "$*" >"$LOGS/$name.log" 2>&1
  rc=$?
  local took=$(( $(date +%s) - t0 ))
  if [ $rc -eq 0 ]; then echo "- $name: ok, ${took} s" >>"$OUT_FILE.steps"
  elif [ $rc -eq 124 ]; then echo "- $name: stopped at its ${limit} s limit" >>"$OUT_FILE.steps"
  else echo "- $name: FAILED (exit $rc, ${took} s): $(tail -n 3 "$LOGS/$name.log" | tr '\n' ' ' | cut -c1-300)" >>"$OUT_FILE.steps"
  fi
  return $rc
}

: >"$OUT_FILE"; : >"$OUT_FILE.steps"
say "# GPU check"
say ""
say "Command: \`bash benchmarks/gpu_check.sh\` ($(date -u +%Y-%m-%d), $(python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)' 2>/dev/null))."
say ""
say "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not found')"
say ""

# 1. install ---------------------------------------------------------------------------------------
if [ -n "${WHEELS:-}" ]; then
  step install-wheels 240 "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $WORK/site $WHEELS/*.whl"
  export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH} PATH=$WORK/site/bin:$PATH
  step install-project 120 "python3 -m pip install -q --no-deps --no-build-isolation -e $ROOT"
else
  step install-project 600 "python3 -m pip install -q -e $ROOT"
fi
# the stages must find recomil from any folder (the demo runs in a copy of the project)
(cd / && python3 -c "import recomil" 2>/dev/null) || export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
python3 - <<'EOF' | tee -a "$OUT_FILE"
import torch
assert torch.cuda.is_available(), "no CUDA device visible to torch"
from recomil.training.device import autocast_dtype
print(f"torch sees {torch.cuda.get_device_name()}; amp: auto trains in {autocast_dtype('auto', torch.device('cuda'))}")
EOF
say ""

# 2. the demo pipeline on CUDA ---------------------------------------------------------------------
if wants demo; then
DEMO=$WORK/demo
mkdir -p "$DEMO"
tar -C "$ROOT" --exclude=./.git --exclude=./.venv --exclude=./.whl --exclude=./.orig --exclude=./data/store \
  --exclude=./models --exclude=./results --exclude=./wandb --exclude=./.dvc/cache --exclude=./.dvc/tmp -cf - . \
  | tar -xf - -C "$DEMO"
(cd "$DEMO" && rm -f dvc.lock data/inputs.json data/params.ok \
  && sed -i 's/^wandb_mode: .*/wandb_mode: disabled/' params.yaml \
  && git init -q && git add -A && git -c user.email=gpu@check -c user.name=gpu-check commit -qm demo)
step demo-dvc-repro 240 "cd $DEMO && dvc repro"
if [ -f "$DEMO/results/metrics.json" ]; then
  say "## Demo pipeline on CUDA (\`dvc repro\`, default params)"
  say ""
  python3 - "$DEMO" "$LOGS/demo-dvc-repro.log" <<'EOF' | tee -a "$OUT_FILE"
import json, re, sys
from pathlib import Path
demo, log = Path(sys.argv[1]), Path(sys.argv[2]).read_text()
m = json.loads((demo / "results/metrics.json").read_text())
s = json.loads((demo / "models/summary.json").read_text()) if (demo / "models/summary.json").is_file() else {}
secs = [float(x) for x in re.findall(r"\| ([0-9.]+) s, at most", log)]
print(f"- test: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, (int, float))))
print(f"- training: {len(secs)} epochs, {sum(secs) / max(1, len(secs)):.2f} s per epoch (training pass and validation)")
prec = re.findall(r"autocast (\w+)", log)
print(f"- precision: {prec[0] if prec else '?'}; summary: {json.dumps(s)[:300]}")
EOF
  if step demo-fp16 180 "cd $DEMO && dvc exp run -S amp=fp16 -S epochs=4 -S warmup_epochs=2 -S freeze_protos_epochs=2"; then
    say "Short fp16 training with the gradient scaler (\`dvc exp run -S amp=fp16 -S epochs=4 -S warmup_epochs=2 -S freeze_protos_epochs=2\`):"
    python3 - "$DEMO" "$LOGS/demo-fp16.log" <<'EOF' | tee -a "$OUT_FILE"
import json, re, sys
from pathlib import Path
demo, log = Path(sys.argv[1]), Path(sys.argv[2]).read_text()
m = json.loads((demo / "results/metrics.json").read_text())
secs = [float(x) for x in re.findall(r"\| ([0-9.]+) s, at most", log)]
losses = re.findall(r"loss ([0-9.na]+)", log)
print(f"- {len(secs)} epochs, {sum(secs) / max(1, len(secs)):.2f} s per epoch, losses {', '.join(losses)} (finite: "
      f"{all(x not in ('nan', 'inf') for x in losses)}); test AUC {m.get('auc', float('nan')):.3f} after 4 epochs")
EOF
    say ""
  fi
fi
fi

# 3. the model step on CUDA ------------------------------------------------------------------------
wants model-step && step model-step 200 "cd $ROOT && python3 benchmarks/model_step.py --device cuda --sizes 1000 4000 16000 64000 --out $WORK/model_step_cuda.md"
if [ -f "$WORK/model_step_cuda.md" ]; then
  sed 's/^# /## /' "$WORK/model_step_cuda.md" >>"$OUT_FILE"
  say ""
fi

# 4. the batched step: seconds per bag, one bag per step against B padded bags per step ---------
wants batched-step && step batched-step 150 "cd $ROOT && python3 benchmarks/batched_step.py --device cuda --bags 64 --min 3000 --max 15000 --per-step 4 8 16 --amp bf16 --repeats 2 > $WORK/batched_step_cuda.txt"
if [ -s "$WORK/batched_step_cuda.txt" ]; then
  say "## Batched step on CUDA (\`benchmarks/batched_step.py --device cuda --bags 64 --min 3000 --max 15000 --amp bf16\`)"
  say ""
  sed -n '/^| configuration/,$p' "$WORK/batched_step_cuda.txt" | tee -a "$OUT_FILE"
  say ""
fi

# 5. side by side with the original on the CTransPath-width cohort -------------------------------
left=$(( 450 - ($(date +%s) - started) ))
if ! wants vs-original; then
  :
elif [ "$left" -gt 60 ]; then
  args="--cohorts c768 --seeds 1 --threads 4 --work $WORK/vs --results $WORK/vs-results"
  if [ -n "${ORIGINAL:-}" ]; then args="$args --original $ORIGINAL --programs original recomil recomil-b16"; else args="$args --programs recomil recomil-b16"; fi
  step vs-original "$left" "cd $ROOT && python3 benchmarks/vs_original.py $args"
  if [ -f "$WORK/vs-results/vs_original.md" ]; then
    sed 's/^# /## /' "$WORK/vs-results/vs_original.md" >>"$OUT_FILE"
  fi
else
  echo "- vs-original: skipped, too little of the 8 minutes left" >>"$OUT_FILE.steps"
fi

# 6. the Camelyon16-size 5-fold study (resumable under $WORK/study) -----------------------------
if wants study; then
  step study 560 "cd $ROOT && python3 benchmarks/gpu_study.py --work $WORK/study --out $WORK/study.md"
  if [ -s "$WORK/study.md" ]; then
    say "## Camelyon16-size 5-fold study (\`benchmarks/gpu_study.py\`)"
    say ""
    cat "$WORK/study.md" | tee -a "$OUT_FILE"
  else
    say "The study did not finish within this call; run again with WORK=$WORK STEPS=study to continue it."
  fi
fi

say ""
say "## Steps"
say ""
cat "$OUT_FILE.steps" | tee -a "$OUT_FILE"
rm -f "$OUT_FILE.steps"
say ""
say "Whole check: $(( $(date +%s) - started )) s."
