#!/usr/bin/env bash
# G-step images/s of BigGAN 128x128 (ch 96, batch 256), fp32 and bf16: our
# binary (`fewlabels bench-gan`, the training step code on synthetic data) and
# the same architecture and step in PyTorch (biggan_torch.py), back to back on
# the same GPU. Packed with ../shared/gpu/pack.sh benches/gan/gpu.sh
# benches/gan/biggan_torch.py and run there as `bash .gpu/gpu.sh`.
# Environment: DEVICE (cuda), RES (128), CH (96), BATCH (256), STEPS (10), WARMUP (3),
# THREADS (0 = all; set it for a CPU comparison), PRECISIONS ("fp32 bf16").
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
bin=${FEWLABELS:-$here/fewlabels}
DEVICE=${DEVICE:-cuda}; RES=${RES:-128}; CH=${CH:-96}; BATCH=${BATCH:-256}
STEPS=${STEPS:-10}; WARMUP=${WARMUP:-3}; THREADS=${THREADS:-0}
PRECISIONS=${PRECISIONS:-"fp32 bf16"}
if [ -z "${FEWLABELS:-}" ]; then
  # On the device: the binary runs against the machine's libtorch.
  tl=$($py -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib
  export LD_LIBRARY_PATH="$tl:${LD_LIBRARY_PATH:-}"
fi
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
out=${OUT:-/tmp}/bench-gan.jsonl
: > "$out"
for prec in $PRECISIONS; do
  flag=""; [ "$prec" = bf16 ] && flag="--bf16"
  echo "== ours    $prec" >&2
  "$bin" --quiet bench-gan --device "$DEVICE" --resolution "$RES" --ch "$CH" \
    --batch-size "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" $flag \
    | sed 's/^{/{"impl":"fewlabels",/' | tee -a "$out"
  echo "== pytorch $prec" >&2
  "$py" "$here/biggan_torch.py" --device "$DEVICE" --resolution "$RES" --ch "$CH" \
    --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" $flag | tee -a "$out"
done
"$py" - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
print(f"\n{'impl':<10} {'prec':<5} {'G params':>11} {'D params':>11} {'G-step img/s':>13} {'D-step img/s':>13}")
for r in rows:
    prec = "bf16" if r["bf16"] else "fp32"
    print(f"{r['impl']:<10} {prec:<5} {r['g_params']:>11,} {r['d_params']:>11,} "
          f"{r['g_step_images_per_s']:>13.1f} {r['d_step_images_per_s']:>13.1f}")
for prec in (False, True):
    o = [r for r in rows if r["bf16"] == prec and r["impl"] == "fewlabels"]
    t = [r for r in rows if r["bf16"] == prec and r["impl"] == "pytorch"]
    if o and t:
        print(f"{'bf16' if prec else 'fp32'}: ours / PyTorch G-step = "
              f"{o[0]['g_step_images_per_s'] / t[0]['g_step_images_per_s']:.2f}")
PY
