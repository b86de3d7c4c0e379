#!/usr/bin/env bash
# api/openapi.yaml is the contract: it parses (Debian's python3-yaml), is OpenAPI 3.1, every
# operation has responses, every /v1 operation needs the bearer key and lists 401 (but the signed
# download link, which states `security: []` and lists 403), every $ref resolves; and the routes `rtaas routes` prints are exactly the file's, compared both ways.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
B=${B:-build}
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3
if ! "$PY" -c 'import yaml' 2>/dev/null; then
  echo "ok - service_openapi # SKIP python3-yaml not installed (Debian python3-yaml)"; exit 0
fi
routes=""
if [[ -x $B/rtaas ]] && routes=$("$B/rtaas" routes 2>/dev/null) && [[ -n $routes ]]; then
  :
else
  routes=""
fi

# A validator beyond this script's own checks, when some python3 on the PATH has one.
VALIDATOR=""
for p in python3 "$PY"; do
  if "$p" -c 'import openapi_spec_validator, yaml' 2>/dev/null; then VALIDATOR=$p; break; fi
done

"$PY" - api/openapi.yaml "$routes" <<'PY'
import re, sys, yaml

path, routes_text = sys.argv[1], sys.argv[2]
fails = 0
def check(ok, desc, detail=""):
    global fails
    print(("ok" if ok else "not ok") + " - service_openapi: " + desc)
    if not ok:
        fails += 1
        for line in str(detail).splitlines()[:40]:
            print("#   " + line)

try:
    doc = yaml.safe_load(open(path))
    check(isinstance(doc, dict), "api/openapi.yaml parses as YAML")
except Exception as e:  # noqa: BLE001 - any parse error is the finding
    check(False, "api/openapi.yaml parses as YAML", e)
    sys.exit(1)

check(re.fullmatch(r"3\.1\.\d+", str(doc.get("openapi", ""))) is not None, "openapi: 3.1.x", doc.get("openapi"))
check(bool(doc.get("info", {}).get("title")) and bool(doc.get("info", {}).get("version")), "info has title and version")

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
paths = doc.get("paths") or {}
check(len(paths) > 0, "it has paths")
ops = {}
for p, item in paths.items():
    methods = [m for m in item if m in METHODS]
    check(len(methods) > 0, f"{p} has at least one operation")
    for m in methods:
        ops[(m.upper(), p)] = (item, item[m])

def resolve(node, seen=()):
    """Follows a local $ref; raises KeyError when it does not resolve."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/") or ref in seen:
            raise KeyError(ref)
        seen += (ref,)
        cur = doc
        for part in ref[2:].split("/"):
            cur = cur[part.replace("~1", "/").replace("~0", "~")]
        node = cur
    return node

bad_refs = []
def walk(node, where):
    if isinstance(node, dict):
        if "$ref" in node:
            try:
                resolve(node)
            except (KeyError, TypeError):
                bad_refs.append(f"{where}: {node['$ref']}")
        for k, v in node.items():
            walk(v, f"{where}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            walk(v, f"{where}/{i}")
walk(doc, "#")
check(not bad_refs, "every $ref resolves", "\n".join(bad_refs))

global_sec = doc.get("security")
check(doc.get("components", {}).get("securitySchemes", {}).get("bearerAuth", {}).get("scheme") == "bearer",
      "components.securitySchemes.bearerAuth is http bearer")
err = doc.get("components", {}).get("schemas", {}).get("Error", {})
e_props = err.get("properties", {}).get("error", {}).get("properties", {})
check({"code", "message", "field"} <= set(e_props), 'Error schema is {"error": {"code", "message", "field"}}', e_props)

# /v1 routes without a key: the token in the path is the credential. Each must say so itself
# (`security: []` on the operation) and list 403 for a bad or expired token.
PUBLIC_V1 = {("GET", "/v1/links/{token}")}

problems = []
for (m, p), (item, op) in sorted(ops.items(), key=lambda x: (x[0][1], x[0][0])):
    where = f"{m} {p}"
    responses = op.get("responses") or {}
    if not responses:
        problems.append(f"{where}: no responses")
        continue
    if not any(str(c).startswith("2") for c in responses):
        problems.append(f"{where}: no 2xx response")
    sec = op.get("security", global_sec)
    needs_key = any("bearerAuth" in s for s in (sec or []))
    if (m, p) in PUBLIC_V1:
        if op.get("security") != []:
            problems.append(f"{where}: a public /v1 route must state security: []")
        if "403" not in {str(c) for c in responses}:
            problems.append(f"{where}: no 403 response")
    elif p.startswith("/v1/"):
        if not needs_key:
            problems.append(f"{where}: a /v1 route without bearerAuth")
        if "401" not in {str(c) for c in responses}:
            problems.append(f"{where}: no 401 response")
    elif needs_key:
        problems.append(f"{where}: an operations route that asks for a key")
    for c, r in responses.items():
        try:
            r = resolve(r)
        except (KeyError, TypeError):
            continue
        if not str(c).startswith("2") and str(c) != "default":
            schema = (r.get("content") or {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref") != "#/components/schemas/Error":
                problems.append(f"{where}: {c} is not an Error")
    params = [resolve(x) for x in list(item.get("parameters", [])) + list(op.get("parameters", []))]
    declared = {x.get("name") for x in params if x.get("in") == "path"}
    in_path = set(re.findall(r"\{(\w+)\}", p))
    if declared != in_path:
        problems.append(f"{where}: path parameters {sorted(in_path)} but declared {sorted(declared)}")
    if "requestBody" in op and not (resolve(op["requestBody"]).get("content")):
        problems.append(f"{where}: a requestBody without content")
check(not problems, f"every operation ({len(ops)}) has a 2xx, /v1 ones bearerAuth and 401 (links: security [] and 403), errors as Error, path parameters declared",
      "\n".join(problems))

want = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/v1/datasets"), ("POST", "/v1/datasets"),
        ("GET", "/v1/datasets/{id}"), ("DELETE", "/v1/datasets/{id}"), ("GET", "/v1/backbones"), ("POST", "/v1/backbones"),
        ("GET", "/v1/backbones/{id}"), ("DELETE", "/v1/backbones/{id}"), ("GET", "/v1/backbones/{id}/weights"),
        ("GET", "/v1/transfers"), ("POST", "/v1/transfers"), ("GET", "/v1/transfers/{id}"),
        ("POST", "/v1/transfers/{id}/cancel"), ("GET", "/v1/transfers/{id}/report"),
        ("GET", "/v1/transfers/{id}/gradients"), ("GET", "/v1/transfers/{id}/head"),
        ("POST", "/v1/transfers/{id}/links"), ("GET", "/v1/links/{token}")}
check(set(ops) >= want, "the file has every route of the README", "missing: " + ", ".join(f"{m} {p}" for m, p in sorted(want - set(ops))))

def norm(p):  # parameter names may differ; their places may not
    return re.sub(r"\{[^}]*\}", "{}", p)

if not routes_text.strip():
    print("ok - service_openapi: server routes equal the file's # SKIP build/rtaas has no `routes` yet")
else:
    server, junk = set(), []
    for line in routes_text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) >= 2 and parts[0].upper() in {x.upper() for x in METHODS} and parts[1].startswith("/"):
            server.add((parts[0].upper(), norm(parts[1])))
        else:
            junk.append(line)
    check(not junk, "`rtaas routes` prints one METHOD /path per line", "\n".join(junk))
    spec = {(m, norm(p)) for m, p in ops}
    check(not (server - spec), "every route the server has is in api/openapi.yaml",
          "in the server, not in the file: " + ", ".join(f"{m} {p}" for m, p in sorted(server - spec)))
    check(not (spec - server), "every route in api/openapi.yaml is in the server",
          "in the file, not in the server: " + ", ".join(f"{m} {p}" for m, p in sorted(spec - server)))
sys.exit(1 if fails else 0)
PY
rc=$?

if [[ -n $VALIDATOR ]]; then
  if out=$("$VALIDATOR" -c 'import sys, yaml; from openapi_spec_validator import validate; validate(yaml.safe_load(open(sys.argv[1])))' api/openapi.yaml 2>&1); then
    echo "ok - service_openapi: openapi-spec-validator accepts the file"
  else
    echo "not ok - service_openapi: openapi-spec-validator accepts the file"
    tail -n 15 <<<"$out" | sed 's/^/#   /'
    rc=1
  fi
else
  echo "ok - service_openapi: openapi-spec-validator accepts the file # SKIP openapi-spec-validator not installed"
fi
exit $rc
