#!/usr/bin/env bash
# PyTorch checkpoint import: tests/parity/gen_pt.py writes random-weight torchvision ResNets in
# every layout rtaas import recognises (zip and legacy) with Debian's python3-torch, and
# build/tests/pt_check imports each and compares the logits; then the command line itself.
set -uo pipefail
cd "$(dirname "$0")/../.."
B=${B:-build}
PY=/usr/bin/python3

if ! "$PY" -c 'import torch, torchvision' >/dev/null 2>&1; then
  echo "ok - pt_import # SKIP python3-torch not installed"
  exit 0
fi
if [[ ! -x $B/tests/pt_check ]]; then
  echo "not ok - pt_import # $B/tests/pt_check not built (make tests)"
  exit 1
fi

dir=${RTAAS_TEST_OUT:-$B/test-output}/pt_import
rm -rf "$dir"
mkdir -p "$dir"
start=$(date +%s)
if ! "$PY" tests/parity/gen_pt.py "$dir" | sed 's/^/# /'; then
  echo "not ok - pt_reference # gen_pt.py failed"
  exit 1
fi
echo "ok - pt_reference # generated in $(( $(date +%s) - start )) s"
rc=0
"$B"/tests/pt_check "$dir" || rc=1

# The command line: the report on stdout, refusals with a status and a reason.
tap() { if [[ $1 -eq 0 ]]; then echo "ok - $2"; else echo "not ok - $2"; rc=1; fi; }
if [[ ! -x $B/rtaas ]]; then
  echo "not ok - pt_cli # $B/rtaas not built"
  exit 1
fi
out=$dir/cli.safetensors
"$B"/rtaas import "$dir/r50_robust_zip.pt" --out "$out" >"$dir/cli.json" 2>"$dir/cli.err"
st=$?
"$PY" - "$dir/cli.json" <<'PYEOF' >/dev/null 2>&1 && [[ $st -eq 0 && -s $out ]]
import json, sys
r = json.load(open(sys.argv[1]))
n = r["normalization"]
assert r["arch"] == "resnet50" and r["format"] == "zip" and r["wrapper"] == "model", r
assert r["prefix"] == "module.model." and r["tensors_used"] == 267, r
assert n["source"] == "file" and n["keys"] == ["module.normalizer.new_mean", "module.normalizer.new_std"], n
assert [round(v, 4) for v in n["mean"]] == [0.4, 0.5, 0.45], n
assert any(i["name"].startswith("module.attacker.model.") for i in r["tensors_ignored"]), r
assert "argparse.Namespace" in r["opaque_objects"], r
PYEOF
tap $? "pt_cli_report"

"$B"/rtaas import "$dir/r18_plain_legacy.pt" --out "$out" --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 \
  >"$dir/cli2.json" 2>"$dir/cli2.err"
st=$?
"$PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["normalization"]["source"] == "option" and r["arch"] == "resnet18" and r["format"] == "legacy"' \
  "$dir/cli2.json" 2>/dev/null && [[ $st -eq 0 ]]
tap $? "pt_cli_mean_std"

rm -f "$dir/EVIL_RAN"
"$B"/rtaas import "$dir/evil_system.pt" --out "$dir/evil.safetensors" >"$dir/evil.out" 2>"$dir/evil.err"
st=$?
[[ $st -eq 1 && ! -e $dir/EVIL_RAN && ! -e $dir/evil.safetensors && ! -s $dir/evil.out ]] &&
  grep -q 'posix.system' "$dir/evil.err"
r=$?
sed 's/^/# /' "$dir/evil.err"
tap $r "pt_cli_refuses_os_system"

"$B"/rtaas import "$dir/r18_plain_zip.pt" >/dev/null 2>&1
[[ $? -eq 2 ]]
tap $? "pt_cli_usage"

# The checkpoints take over a gigabyte; keep them only when something failed.
[[ $rc -eq 0 ]] && rm -f "$dir"/*.pt "$out"
exit $rc
