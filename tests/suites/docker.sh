#!/usr/bin/env bash
# The Docker deployment without a Docker engine (none runs on these machines): docker/compose.yaml
# passes `docker compose config` or Debian's `docker-compose config`, and a structural check
# (services, images and builds, health checks, secrets from files, depends_on, the GPU
# reservation, the cpu profile); every RTAAS_* variable that it or docker/Dockerfile sets is
# one rtaas reads and the README documents; every service's command is an rtaas command that
# build/rtaas accepts; and the Dockerfile builds with the CI's steps, `make deps` then `make`.
# What it cannot show: that the image builds and runs (that needs an engine and the network);
# tests/suites/compose_run.sh runs the services of the compose file in namespaces.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
B=${B:-build}
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3
fails=0
ok() { echo "ok - docker: $*"; }
not_ok() {
  fails=$((fails + 1))
  echo "not ok - docker: $1"
  shift
  local d
  for d in "$@"; do printf '%s\n' "$d" | head -n 30 | sed 's/^/#   /'; done
}
check() { local rc=$1; shift; if [[ $rc -eq 0 ]]; then ok "$1"; else not_ok "$@"; fi; }
skip() { echo "ok - docker: $1 # SKIP $2"; }

for f in docker/Dockerfile docker/compose.yaml docker/secrets/README.md docker/runtime-packages .dockerignore; do
  [[ -f $f ]]; check $? "$f exists"
done
[[ -x docker/runtime-packages ]]; check $? "docker/runtime-packages is executable"

# ---- the compose tools' own validation -------------------------------------------------------
tool=()
if docker compose version >/dev/null 2>&1; then
  tool=(docker compose)
elif command -v docker-compose >/dev/null && docker-compose version >/dev/null 2>&1; then
  tool=(docker-compose)
fi
if [[ ${#tool[@]} -eq 0 ]]; then
  skip "docker compose config accepts docker/compose.yaml" "neither docker compose nor docker-compose (Debian docker-compose) is installed"
else
  for prof in "" cpu; do
    args=(-f docker/compose.yaml)
    [[ -n $prof ]] && args+=(--profile "$prof")
    out=$("${tool[@]}" "${args[@]}" config 2>&1)
    check $? "${tool[*]} config accepts docker/compose.yaml${prof:+ with --profile $prof}" "$out"
  done
  services=$("${tool[@]}" -f docker/compose.yaml --profile cpu config --services 2>&1 | sort | xargs)
  [[ $services == "api postgres worker worker-cpu" ]]
  check $? "${tool[*]} sees the services api, postgres, worker, worker-cpu" "$services"
fi

# ---- structure, variables, commands, Dockerfile ----------------------------------------------
if ! "$PY" -c 'import yaml' 2>/dev/null; then
  not_ok "python3-yaml is installed (Debian python3-yaml; make deps installs it): the structural checks need it"
  echo "# docker: $fails failed"
  exit 1
fi
routes=""
[[ -x $B/rtaas ]] && routes=$("$B/rtaas" routes 2>/dev/null)

"$PY" - "$B/rtaas" "$routes" <<'PY' || fails=$((fails + 1))
import glob, os, re, subprocess, sys
import urllib.parse
import yaml
sys.path.insert(0, "tests/service")
import dockerfile

rtaas, routes = sys.argv[1], sys.argv[2]
fails = 0
def check(ok, desc, detail=""):
    global fails
    print(("ok" if ok else "not ok") + " - docker: " + desc)
    if not ok:
        fails += 1
        for line in str(detail).splitlines()[:30]:
            print("#   " + line)
def skip(desc, why):
    print(f"ok - docker: {desc} # SKIP {why}")

doc = yaml.safe_load(open("docker/compose.yaml"))
svcs = doc.get("services") or {}
check(set(svcs) == {"postgres", "api", "worker", "worker-cpu"}, "compose: services postgres, api, worker, worker-cpu", sorted(svcs))
if not {"postgres", "api", "worker", "worker-cpu"} <= set(svcs):
    sys.exit(1)

def env(s):
    e = svcs[s].get("environment") or {}
    if isinstance(e, list):
        e = dict(x.split("=", 1) if "=" in x else (x, None) for x in e)
    return {k: (None if v is None else str(v)) for k, v in e.items()}

# postgres: the official image, a named volume, pg_isready, the password from a secret file
pg = svcs["postgres"]
check(str(pg.get("image", "")).startswith("postgres:"), "postgres: the official image", pg.get("image"))
vols = [str(v).split(":")[0] for v in pg.get("volumes") or []]
check(any(v in (doc.get("volumes") or {}) for v in vols), "postgres: its data on a named volume", vols)
hc = pg.get("healthcheck") or {}
check("pg_isready" in " ".join(map(str, hc.get("test") or [])), "postgres: healthcheck runs pg_isready", hc)
pe = env("postgres")
check(pe.get("POSTGRES_PASSWORD_FILE") == "/run/secrets/db_password" and "POSTGRES_PASSWORD" not in pe,
      "postgres: POSTGRES_PASSWORD_FILE from the db_password secret, no POSTGRES_PASSWORD", pe)

rt = ("api", "worker", "worker-cpu")
for s in rt:
    d = svcs[s]
    b = d.get("build") or {}
    df = os.path.normpath(os.path.join("docker", str(b.get("context", ".")), str(b.get("dockerfile", "Dockerfile"))))
    check(bool(d.get("image")) and os.path.isfile(df) and df == "docker/Dockerfile",
          f"{s}: image named, built from docker/Dockerfile with the repository as context", f"image {d.get('image')}, dockerfile {df}")
    dep = (d.get("depends_on") or {})
    check(isinstance(dep, dict) and (dep.get("postgres") or {}).get("condition") == "service_healthy",
          f"{s}: depends_on postgres with condition service_healthy", dep)
    e = env(s)
    url = e.get("RTAAS_DATABASE_URL") or ""
    u = urllib.parse.urlsplit(url)
    q = urllib.parse.parse_qs(u.query)
    check(u.scheme in ("postgres", "postgresql") and u.password is None and "password" not in q and "password=" not in url,
          f"{s}: RTAAS_DATABASE_URL names the postgres service and holds no password", url)
    check(e.get("RTAAS_DATABASE_PASSWORD_FILE") == "/run/secrets/db_password", f"{s}: RTAAS_DATABASE_PASSWORD_FILE=/run/secrets/db_password", e)
    if s != "api":
        check("ports" not in d and "container_name" not in d, f"{s}: no host port or container_name (either would stop --scale {s}=N)", d.get("ports"))
        hc = d.get("healthcheck") or {}
        check(hc.get("disable") is True or hc.get("test") in (["NONE"], "NONE"), f"{s}: the image's HTTP health check is off (a worker serves no HTTP)", hc)
        g = d.get("stop_grace_period", "10s")
        check(dockerfile.seconds(g) >= 30, f"{s}: stop_grace_period of at least 30 s (a CPU step may outlast Docker's 10 s)", g)

api = svcs["api"]
check(api.get("command") == ["serve", "--no-workers"], "api: command rtaas serve --no-workers", api.get("command"))
ports = [str(p) for p in api.get("ports") or []]
check(any(p.split(":")[-1] == "8080" for p in ports), "api: publishes container port 8080", ports)
ae = env("api")
check(ae.get("RTAAS_SIGNING_KEY_FILE") == "/run/secrets/signing_key", "api: RTAAS_SIGNING_KEY_FILE=/run/secrets/signing_key", ae)
check(ae.get("RTAAS_LISTEN", "0.0.0.0:8080").rsplit(":", 1)[-1] == "8080", "api: RTAAS_LISTEN on port 8080", ae.get("RTAAS_LISTEN"))

w = svcs["worker"]
check(w.get("command") == ["worker"] and env("worker").get("RTAAS_DEVICES") == "cuda:0", "worker: rtaas worker with RTAAS_DEVICES=cuda:0", (w.get("command"), env("worker")))
devs = (((w.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
check(any(x.get("driver") == "nvidia" and "gpu" in (x.get("capabilities") or []) and str(x.get("count", "")) in ("1", "all") for x in devs),
      "worker: reserves an nvidia GPU (deploy.resources.reservations.devices)", devs)
check(not w.get("profiles"), "worker: in no profile (it starts by default)", w.get("profiles"))
wc = svcs["worker-cpu"]
check("cpu" in (wc.get("profiles") or []) and wc.get("command") == ["worker"] and env("worker-cpu").get("RTAAS_DEVICES") == "cpu"
      and "deploy" not in wc, "worker-cpu: profile cpu, rtaas worker with RTAAS_DEVICES=cpu, no GPU reservation", wc)
check(all(not svcs[s].get("profiles") for s in ("postgres", "api")), "postgres and api are in no profile")

# secrets: defined from files under docker/secrets/, listed by every service that reads them,
# ignored by git and by the build context, and the README there says how to make each
top = doc.get("secrets") or {}
readme = open("docker/secrets/README.md").read() if os.path.exists("docker/secrets/README.md") else ""
for name, spec in top.items():
    f = (spec or {}).get("file", "")
    path = os.path.normpath(os.path.join("docker", f))
    check(path.startswith("docker/secrets/") and "environment" not in (spec or {}),
          f"secret {name}: from a file under docker/secrets/", spec)
    check(re.search(r">\s*" + re.escape(name) + r"\b", readme) is not None, f"secret {name}: docker/secrets/README.md shows how to make it")
    ign = subprocess.run(["git", "check-ignore", "-q", path]).returncode == 0
    check(ign, f"secret {name}: {path} is ignored by git")
di = [l.strip().rstrip("/") for l in open(".dockerignore") if l.strip() and not l.startswith("#")] if os.path.exists(".dockerignore") else []
check("docker/secrets" in di and "build" in di, ".dockerignore keeps docker/secrets/ and build/ out of the build context", di)
for s, d in svcs.items():
    listed = {x if isinstance(x, str) else x.get("source") for x in d.get("secrets") or []}
    e = env(s)
    used = {m for v in e.values() if v for m in re.findall(r"/run/secrets/([\w.-]+)", v)}
    check(used <= listed and listed <= set(top), f"{s}: the secrets it reads it lists, and they are defined", f"reads {sorted(used)}, lists {sorted(listed)}, defined {sorted(top)}")
    lit = [k for k, v in e.items() if re.search(r"PASSWORD|SECRET|SIGNING_KEY|TOKEN", k) and not k.endswith("_FILE")]
    check(not lit, f"{s}: no secret as a literal value in its environment", lit)

# ---- the Dockerfile ----
instr = dockerfile.instructions("docker/Dockerfile")
froms = [a for i, a in instr if i == "FROM"]
check(len(froms) >= 2 and re.search(r"\bAS\s+build\b", froms[0], re.I), "Dockerfile: multi-stage, the first stage `AS build`", froms)
final = dockerfile.final_stage(instr)
def last(kind):
    return dockerfile.last(final, kind)
user = last("USER")
check(user is not None and user.split(":")[0] not in ("root", "0"), "Dockerfile: the runtime stage runs as a non-root user", user)
hc = last("HEALTHCHECK") or ""
check("/healthz" in hc and "curl" in hc, "Dockerfile: HEALTHCHECK curls /healthz", hc)
check("8080" in (last("EXPOSE") or "").split(), "Dockerfile: EXPOSE 8080", last("EXPOSE"))
ep = last("ENTRYPOINT") or ""
check(ep.replace(" ", "") in ('["rtaas"]', '["/usr/local/bin/rtaas"]'), "Dockerfile: ENTRYPOINT rtaas", ep)
check(any(i == "COPY" and "--from=build" in a and "build/rtaas" in a for i, a in final), "Dockerfile: the runtime stage copies build/rtaas from the build stage")
cp_at = next((k for k, (i, a) in enumerate(final) if i == "COPY" and "build/rtaas" in a), len(final))
check(any(i == "RUN" and re.match(r"rtaas info\b", a) for i, a in final[cp_at:]),
      "Dockerfile: the runtime stage runs `rtaas info` after the copy (every library loads, or the build fails)")
# the build steps: every make run in the build stage, in order, must be `make deps` then `make`
makes = []
for i, a in instr[:len(instr) - len(final)]:
    if i != "RUN":
        continue
    for part in re.split(r"&&|;|\|\|", a):
        words = [x for x in part.split() if not re.match(r"^[A-Z_][A-Z0-9_]*=", x)]
        if words and words[0] == "make":
            makes.append(" ".join(x for x in words[1:] if not x.startswith("-j")))
check(makes == ["deps", ""], "Dockerfile: the build stage runs `make deps` then `make`, as CI and the README do", makes)
ci = open(".ci/run").read() if os.path.exists(".ci/run") else ""
mk = open("Makefile").read()
check(re.search(r"^\s*make test\b", ci, re.M) is not None and re.search(r"^test:\s*deps all\b", mk, re.M) is not None,
      "CI's `make test` is `make deps` + `make` (all) + the suites (Makefile: test: deps all)")

# ---- every RTAAS_* variable set is read by rtaas and documented -----------------------------
env_set = {}
for s in svcs:
    for k in env(s):
        if k.startswith("RTAAS_"):
            env_set.setdefault(k, []).append(f"compose {s}")
for i, a in instr:
    if i == "ENV":
        for k in re.findall(r"(?:^|\s)(RTAAS_[A-Z0-9_]+)[= ]", " " + a):
            env_set.setdefault(k, []).append("Dockerfile ENV")
src = {}
for f in glob.glob("server/*.c") + glob.glob("engine/**/*.c", recursive=True) + glob.glob("engine/**/*.cu", recursive=True):
    t = open(f, errors="replace").read()
    if "getenv(" in t:
        src[f] = t
def reads(name):
    """getenv("NAME"), or "NAME" as an argument in a file that reads the environment (config.c's
    env_int and env_secret helpers take the names)."""
    return [f for f, t in src.items() if f'getenv("{name}")' in t or re.search(r'[(,]\s*"' + re.escape(name) + r'"\s*[,)]', t)]
check(len(env_set) >= 5, "the compose file and Dockerfile set RTAAS_* variables (found %d)" % len(env_set), sorted(env_set))
unread = {k: v for k, v in env_set.items() if not reads(k)}
check(not unread, f"every RTAAS_* variable they set ({len(env_set)}) is read by server/ or engine/ (getenv)", unread)
readme = open("README.md").read()
conf = readme[readme.find("## Configuration"):]
conf = conf[:conf.find("\n## ", 5)] if "\n## " in conf[5:] else conf
undoc = [k for k in env_set if f"`{k}`" not in conf]
check(not undoc, "every RTAAS_* variable they set is in README's Configuration table", undoc)

# ---- every command is one rtaas has -----------------------------------------------------------
main_c = open("server/main.c").read()
cmds = {"api": svcs["api"]["command"], "worker": svcs["worker"]["command"], "worker-cpu": svcs["worker-cpu"]["command"]}
cmd = last("CMD")
if cmd:
    cmds["Dockerfile CMD"] = yaml.safe_load(cmd)
svc_c = open("server/service.c").read()
for who, c in cmds.items():
    c = c if isinstance(c, list) else str(c).split()
    known = f'!strcmp(argv[1], "{c[0]}")' in main_c
    flags_known = all(f'"{f}"' in svc_c for f in c[1:])
    check(known and flags_known, f"{who}: `rtaas {' '.join(c)}` is in main.c's dispatch (flags in service.c)", c)
    if os.access(rtaas, os.X_OK):
        r = subprocess.run([rtaas] + c + ["--help"], capture_output=True, text=True, timeout=20)
        check(r.returncode == 0 and "usage" in r.stdout, f"{who}: build/rtaas accepts `{' '.join(c)}` (with --help: usage, exit 0)",
              f"rc={r.returncode} {r.stdout[-300:]} {r.stderr[-300:]}")
    else:
        skip(f"{who}: build/rtaas accepts `{' '.join(c)}`", "build/rtaas not built")
if os.access(rtaas, os.X_OK):
    r = subprocess.run([rtaas, "serve", "--no-such-flag"], capture_output=True, text=True, timeout=20)
    check(r.returncode == 2 and "unknown argument" in r.stderr, "build/rtaas serve refuses an unknown flag (exit 2) instead of starting", r.stderr[-300:])
else:
    skip("build/rtaas serve refuses an unknown flag", "build/rtaas not built")
if routes:
    check("GET /healthz" in routes.splitlines(), "the health check's /healthz is a route of rtaas")
else:
    skip("the health check's /healthz is a route of rtaas", "build/rtaas not built")
sys.exit(1 if fails else 0)
PY

# ---- docker/runtime-packages on this machine's build ---------------------------------------
# Here CUDA is not installed from packages, so its libraries are the only ones allowed unowned;
# in the image they come from NVIDIA's packages and the script must name them all.
if [[ -x $B/rtaas ]] && command -v dpkg >/dev/null && command -v ldd >/dev/null; then
  out=$(docker/runtime-packages "$B/rtaas" 2>"$B/runtime-packages.err")
  others=$(grep -v "no package holds /usr/local/cuda" "$B/runtime-packages.err")
  [[ -z $others ]] && grep -qx libpq5 <<<"$out" && grep -qx libmicrohttpd12 <<<"$out" && grep -qx libdnnl2 <<<"$out"
  check $? "docker/runtime-packages names the packages of build/rtaas's libraries (libpq5, libmicrohttpd12, libdnnl2, ...)" \
    "stdout: $(xargs <<<"$out")" "stderr: $(cat "$B/runtime-packages.err")"
  rm -f "$B/runtime-packages.err"
else
  skip "docker/runtime-packages names the packages of build/rtaas's libraries" "no build/rtaas, dpkg or ldd"
fi

echo "# docker: $fails failed"
[[ $fails -eq 0 ]]
