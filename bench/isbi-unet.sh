#!/usr/bin/env bash
# Foundation acceptance on real data: train a U-Net on ISBI 2012 slices 0-24 with the CLI, evaluate on 25-29.
# Usage: bash bench/isbi-unet.sh [work-dir]   (needs `npm run build`; data from ../shared or $TESSERA_DATA)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data=${TESSERA_DATA:-$root/../shared/data}/isbi2012-em-membrane
work=${1:-$(mktemp -d)}
tessera="node $root/apps/cli/dist/bin.js"
mkdir -p "$work"/{train,val}/{image,label}
for i in $(seq 0 29); do
  split=train; [ "$i" -ge 25 ] && split=val
  ln -sf "$data/train/image/$i.png" "$work/$split/image/$i.png"
  ln -sf "$data/train/label/$i.png" "$work/$split/label/$i.png"
done
cat > "$work/classes.json" <<'JSON'
{ "classes": [ { "name": "membrane", "value": 0, "color": "#ff3030" }, { "name": "cell", "value": 255, "color": "#30c0ff" } ] }
JSON
cat > "$work/train.json" <<'JSON'
{ "augment": { "flip": true, "rotate90": true, "rotate": 15, "scale": [0.9, 1.1], "brightness": 0.1, "contrast": 0.15 } }
JSON
cd "$work"
rm -rf model
/usr/bin/env time -v $tessera train --arch unet --images train/image --masks train/label --classes classes.json \
  --out model --config train.json --arch-option baseFilters=16 --tile 256 --batch 4 --steps-per-epoch 20 \
  --epochs 10 --lr 0.002 --loss ce-dice --val-split 0.12 --time-budget 28 --seed 1
$tessera evaluate --model model --images val/image --masks val/label --json | tee evaluation-25-29.json
