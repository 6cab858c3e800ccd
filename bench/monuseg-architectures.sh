#!/usr/bin/env bash
# Real-data comparison on MoNuSeg (H&E nuclei): U-Net, FCN-8s and DeepLabv3+ trained with the CLI on the same
# split (first 16 tiles in name order for training, last 4 held out) and the same time budget, run side by side.
# Usage: BUDGET=14 bash bench/monuseg-architectures.sh [work-dir] [archs...]   (needs `npm run build`)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data=${TESSERA_DATA:-$root/../shared/data}/monuseg-train20
work=${1:-$(mktemp -d)}
shift || true
archs=${*:-unet fcn8s deeplabv3plus}
budget=${BUDGET:-14}
tessera="node $root/apps/cli/dist/bin.js"
mkdir -p "$work"/{train,test}/{images,masks}
i=0
for f in $(ls "$data/images" | sort); do
  split=train; [ "$i" -ge 16 ] && split=test
  ln -sf "$data/images/$f" "$work/$split/images/$f"
  ln -sf "$data/masks/${f%.tif}.png" "$work/$split/masks/${f%.tif}.png"
  i=$((i + 1))
done
cat > "$work/classes.json" <<'JSON'
{ "classes": [ { "name": "background", "value": 0, "color": "#000000" }, { "name": "nucleus", "value": 1, "color": "#00ff80" } ] }
JSON
cat > "$work/train.json" <<'JSON'
{ "augment": { "flip": true, "rotate90": true, "rotate": 20, "scale": [0.85, 1.15], "brightness": 0.1, "contrast": 0.15,
  "hue": 0.03, "saturation": 0.15, "stain": 0.05 } }
JSON
cd "$work"
for arch in $archs; do
  extra=""; [ "$arch" = unet ] && extra="--arch-option baseFilters=16"
  rm -rf "model-$arch"
  /usr/bin/env time -v $tessera train --arch "$arch" $extra --images train/images --masks train/masks \
    --classes classes.json --config train.json --out "model-$arch" --tile 256 --batch 4 --steps-per-epoch 20 \
    --epochs 8 --lr 0.002 --loss ce-dice --val-split 0.125 --time-budget "$budget" --seed 1 > "train-$arch.log" 2>&1 &
done
wait
for arch in $archs; do
  echo "== $arch: $(grep -h 'model: /' "train-$arch.log")"
  $tessera evaluate --model "model-$arch" --images test/images --masks test/masks --json | tee "evaluation-$arch.json"
done
