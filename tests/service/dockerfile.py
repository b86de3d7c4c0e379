"""What tests/suites/docker.sh and compose_run.sh read from docker/Dockerfile and compose.yaml."""
import re


def instructions(path):
    """The Dockerfile's instructions as (KEYWORD, arguments) pairs: continuation lines joined,
    comment lines dropped."""
    lines, cur = [], ""
    for raw in open(path).read().splitlines():
        if raw.lstrip().startswith("#") and not cur:
            continue
        if raw.rstrip().endswith("\\"):
            cur += raw.rstrip()[:-1] + " "
            continue
        cur += raw
        if cur.strip():
            lines.append(cur.strip())
        cur = ""
    return [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l else "") for l in lines]


def final_stage(instr):
    """The instructions of the last stage, from its FROM on."""
    return instr[max(k for k, (i, _) in enumerate(instr) if i == "FROM"):]


def last(instr, kind):
    """The arguments of the last KIND instruction in instr, or None."""
    args = [a for i, a in instr if i == kind]
    return args[-1] if args else None


def seconds(duration):
    """A compose duration (1m30s, 60s, 2h) in seconds."""
    return sum(int(v) * {"h": 3600, "m": 60, "s": 1}[u] for v, u in re.findall(r"(\d+)([hms])", str(duration)))
