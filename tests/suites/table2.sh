#!/usr/bin/env bash
# The shape of the paper's Table 2 on Fashion-MNIST (Debian's dataset-fashion-mnist), through
# `rtaas run`: a natural and a free-adversarially-trained small CNN source on classes 0-4, a
# linear transfer from each to classes 5-9, PGD-20 and CW-20 at eps 0.1 on 500 test images.
# Asserts the paper's first finding: the transfer from the robust source is far more robust.
set -uo pipefail
cd "$(dirname "$0")/../.."
B=${B:-build}
out=${RTAAS_TEST_OUT:-$B/test-output}/table2
FM=${RTAAS_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
if [[ ! -f $FM/train-images-idx3-ubyte.gz ]]; then
  echo "ok - table2 # SKIP Fashion-MNIST not installed (Debian package dataset-fashion-mnist)"; exit 0
fi
rm -rf "$out"; mkdir -p "$out"
data() { # classes per_class file-prefix
  printf '{"format": "idx", "path": "%s/%s-images-idx3-ubyte.gz", "labels": "%s/%s-labels-idx1-ubyte.gz", "classes": %s%s}' \
    "$FM" "$3" "$FM" "$3" "$1" "${2:+, \"per_class\": $2}"
}
eval_spec='"eval": {"eps": 0.1, "examples": 500, "gradient_maps": 8, "attacks": [{"kind": "pgd", "steps": 20}, {"kind": "cw", "steps": 20}]}'
run() { # name spec
  echo "$2" >"$out/$1.json"
  if ! build/rtaas run "$out/$1.json" --out "$out/$1" >"$out/$1.report.json" 2>"$out/$1.log"; then
    echo "not ok - table2 $1"; tail -n 20 "$out/$1.log" | sed 's/^/# /'; exit 1
  fi
  echo "ok - table2 $1"
}
src_data=$(data "[0,1,2,3,4]" 2000 train); src_test=$(data "[0,1,2,3,4]" "" t10k)
tgt_data=$(data "[5,6,7,8,9]" 2000 train); tgt_test=$(data "[5,6,7,8,9]" "" t10k)
run natural "{\"method\": \"natural\", \"seed\": 1, \"arch\": \"smallcnn\", \"dataset\": $src_data, \"test\": $src_test,
  \"params\": {\"epochs\": 3, \"lr\": 0.05}, $eval_spec}"
run robust "{\"method\": \"free_at\", \"seed\": 1, \"arch\": \"smallcnn\", \"dataset\": $src_data, \"test\": $src_test,
  \"params\": {\"epochs\": 3, \"lr\": 0.05, \"eps\": 0.1, \"replay\": 4}, $eval_spec}"
for s in natural robust; do
  run "linear-from-$s" "{\"method\": \"linear\", \"seed\": 2, \"backbone\": {\"arch\": \"smallcnn\", \"weights\": \"$out/$s/model.safetensors\"},
    \"dataset\": $tgt_data, \"test\": $tgt_test, \"params\": {\"epochs\": 20, \"lr_schedule\": [[12, 0.001]]}, $eval_spec}"
done
/usr/bin/python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
def row(name):
    e = json.load(open(f"{out}/{name}.report.json"))["evaluation"]
    a = {x["kind"]: x["robust_accuracy"] for x in e["attacks"]}
    return e["clean"]["accuracy"], a["pgd"], a["cw"]
print("# Fashion-MNIST, small CNN, eps = 0.1, 500 test images, PGD-20 / CW-20 (rtaas run, CPU, seed 1/2)")
print("# %-28s %-8s %8s %8s %8s" % ("source -> target", "source", "val.", "PGD-20", "CW-20"))
rows = {}
for s in ("natural", "robust"):
    c, p, w = row(s)
    print("# %-28s %-8s %7.2f%% %7.2f%% %7.2f%%" % ("classes 0-4 (source itself)", s, 100 * c, 100 * p, 100 * w))
for s in ("natural", "robust"):
    c, p, w = rows[s] = row(f"linear-from-{s}")
    print("# %-28s %-8s %7.2f%% %7.2f%% %7.2f%%" % ("0-4 -> 5-9, linear", s, 100 * c, 100 * p, 100 * w))
ok = rows["robust"][1] >= rows["natural"][1] + 0.15 and rows["robust"][2] >= rows["natural"][2] + 0.15
print(("ok" if ok else "not ok") + " - table2 robust source transfers robustness (PGD-20 %.1f%% vs %.1f%%, CW-20 %.1f%% vs %.1f%%)"
      % (100 * rows["robust"][1], 100 * rows["natural"][1], 100 * rows["robust"][2], 100 * rows["natural"][2]))
sys.exit(0 if ok else 1)
PY
