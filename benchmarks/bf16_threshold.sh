#!/bin/bash
# Where bf16 autocast stops paying on a CPU: the model step (benchmarks/model_step.py) on small bags,
# float32 against bf16, at two feature widths and 1 and 2 torch threads. Writes
# benchmarks/model_step_small.md; about 5 minutes on a 2-core machine (run it alone: the ratios are
# only meaningful without other trainings on the cores). Behind amp: auto's CPU_BF16_MIN_PATCHES.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/model_step_small.md
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
{
  echo "# bf16 against float32 on small bags (CPU)"
  echo
  echo "Command: \`bash benchmarks/bf16_threshold.sh\` ($(date +%F)). Each part below is one"
  echo "\`benchmarks/model_step.py\` run (fresh process per size and precision, the fastest of 8 steps)."
  for dim in 64 768; do
    for threads in 1 2; do
      OMP_NUM_THREADS=$threads python benchmarks/model_step.py --sizes 32 128 256 512 1024 2048 --large 0 \
        --no-varying --repeats 8 --dim "$dim" --out "$tmp/part.md" > /dev/null
      echo
      echo "## D = $dim, $threads thread(s)"
      echo
      grep -v '^# ' "$tmp/part.md" | grep -v '^Command:' | grep -v 'p_bf16 - p_fp32' | cat -s
    done
  done
} > "$tmp/all.md"
cat -s "$tmp/all.md" > "$out"
echo "wrote $out"
