#!/usr/bin/env bash
# Issue 29, part 1: the training steps at their real size on this machine's
# CPU, ours against PyTorch eager, each contender twice, alternated:
#   - one full BigGAN update at 128x128, ch 96, batch 8 (2 D steps on the
#     real batch and fresh fakes, then the G step with Adam and the EMA),
#     compare_gan's variant on both sides (`--arch compare-gan`; the same
#     parameter count is checked);
#   - one S2L step of the ResNet-50 extractor at 128x128: 4 rotations of 8
#     images + 8 labelled ones, 1000 classes, SGD with momentum.
#   benches/gan/cpu128.sh     (~15 min on 2 cores; run it alone: `uptime` < 0.5)
# Environment: THREADS (2), ARCH (compare-gan), STEPS (2), OUT (runs/bench-cpu128).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. benches/env.sh
threads=${THREADS:-2}
arch=${ARCH:-compare-gan}
steps=${STEPS:-2}
out=${OUT:-$top/runs/bench-cpu128}
mkdir -p "$out"
bench_build --example pretrain_bench
py=$FEWLABELS_PYTHON
echo "uptime: $(uptime)" | tee "$out/load.txt"
: > "$out/gan.jsonl"
: > "$out/s2l.jsonl"
for pass in 1 2; do
  "$FL_BIN" --quiet bench-gan --device cpu --resolution 128 --ch 96 --batch-size 8 --arch "$arch" \
    --d-steps 2 --steps "$steps" --warmup 1 --threads "$threads" | sed 's/^{/{"impl":"fewlabels",/' | tee -a "$out/gan.jsonl"
  "$py" benches/gan/biggan_torch.py --device cpu --resolution 128 --ch 96 --batch 8 --arch "$arch" \
    --d-steps 2 --steps "$steps" --warmup 1 --threads "$threads" | tee -a "$out/gan.jsonl"
  "$FL_EXAMPLES/pretrain_bench" step "$threads" "$steps" 8 8 resnet50 128 1000 | tee -a "$out/s2l.jsonl"
  "$py" benches/pretrain/torch_step.py "$threads" "$steps" 8 8 resnet50 128 1000 | tee -a "$out/s2l.jsonl"
done
echo "uptime: $(uptime)" | tee -a "$out/load.txt"
"$py" - "$out/gan.jsonl" "$out/s2l.jsonl" <<'PY'
import json, sys
gan = [json.loads(l) for l in open(sys.argv[1])]
s2l = [json.loads(l) for l in open(sys.argv[2])]
ours = [r for r in gan if r["impl"] == "fewlabels"]
torch = [r for r in gan if r["impl"] == "pytorch"]
assert (ours[0]["g_params"], ours[0]["d_params"]) == (torch[0]["g_params"], torch[0]["d_params"]), "different networks"
print(f"BigGAN 128 ch 96 batch 8 ({ours[0]['g_params']:,} + {ours[0]['d_params']:,} parameters), seconds per update (2 D + G):")
for k in ("update_seconds", "d_step_seconds", "g_step_seconds"):
    o, t = [r[k] for r in ours], [r[k] for r in torch]
    print(f"  {k:<15} ours {o[0]:.2f} / {o[1]:.2f}   PyTorch {t[0]:.2f} / {t[1]:.2f}   ratio (ours speed / PyTorch's) {min(t) / min(o):.3f}")
o = [r["images_per_s"] for r in s2l if r["impl"] == "tch"]
t = [r["images_per_s"] for r in s2l if r["impl"] == "pytorch"]
print(f"S2L ResNet-50 128 step, images/s: ours {o[0]:.2f} / {o[1]:.2f}   PyTorch {t[0]:.2f} / {t[1]:.2f}   ratio {max(o) / max(t):.3f}")
PY
