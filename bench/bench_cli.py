"""Start-up of the `checkpoint` command: CPU time of a fresh process running a command, against a peer
process doing the same work through the library (its imports included), in the same rounds. What the
CLI adds is its own imports; a command that loads modules it does not need shows up here. Both run
from bytecode, as an installed appliance does (pip compiles every module it installs)."""
from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.cards import keys as keymod

from . import fixtures
from .goals import judge
from .timing import median, quartiles, table
from .world import world

GOALS = {"checkpoint verify": "cli.verify", "checkpoint --help": "cli.help",
         "checkpoint config check": "cli.config_check"}
"""Each command's goal (bench/goals.py): the most it may cost, as a multiple of its peer (the CLI's own imports)."""

VERIFY_PEER = """
import sys
from scanner.cards.trust import load_trust
from scanner.cards.verifier import verify
sys.exit(0 if verify(sys.argv[3], load_trust([sys.argv[1]], []), int(sys.argv[2])).accepted else 1)
"""
HELP_PEER = "import click; click.echo('checkpoint')"
CONFIG_PEER = """
import sys
from scanner.appliance.config import check_file
sys.exit(2 if check_file(sys.argv[1]) else 0)
"""


def child_env(cache: Path) -> dict[str, str]:
    """The children's environment: Python's bytecode cache on, kept in ``cache``. An appliance runs every
    module from the bytecode pip wrote at install; a shell with PYTHONDONTWRITEBYTECODE would instead
    compile the project's modules (the 180 KB catalogue among them) in every fresh process, while the
    peer's click comes precompiled."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def _cpu_s(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    """User + system CPU seconds of one child process (robust to a busy machine, unlike wall time)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
                       check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"bench fixture broken: {' '.join(argv[:4])}... exited {r.returncode}: "
                         f"{r.stderr[-300:]!r}")
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def run(quick: bool = False) -> dict:
    root = Path(__file__).resolve().parent.parent
    w = world()
    issuer = w.ed_key
    assert isinstance(issuer, ed25519.Ed25519PrivateKey)
    rounds = 3 if quick else 15
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        pub = Path(tmp) / "issuer.pub"
        pub.write_bytes(keymod.public_pem(issuer.public_key()))
        text = fixtures.card_text(issuer, w.at)
        config = root / "config" / "venue.toml"  # the shipped example: every section the schema checks
        py = sys.executable
        pairs = {
            "checkpoint verify": ([py, "-m", "scanner", "verify", "--trust", str(pub), "--at", str(w.at), text],
                                  [py, "-c", VERIFY_PEER, str(pub), str(w.at), text]),
            "checkpoint --help": ([py, "-m", "scanner", "--help"], [py, "-c", HELP_PEER]),
            "checkpoint config check": ([py, "-m", "scanner", "config", "check", str(config)],
                                        [py, "-c", CONFIG_PEER, str(config)]),
        }
        env = child_env(Path(tmp) / "pycache")
        for command, peer in pairs.values():  # an untimed first run of each writes its bytecode
            _cpu_s(command, root, env)
            _cpu_s(peer, root, env)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in pairs}
        rng = random.Random(1)
        for _ in range(rounds):
            order = list(pairs)
            rng.shuffle(order)
            for name in order:
                command, peer = pairs[name]
                first, second = (command, peer) if rng.random() < 0.5 else (peer, command)
                a, b = _cpu_s(first, root, env), _cpu_s(second, root, env)
                samples[name].append((a, b) if first is command else (b, a))
    print(f"== CLI start-up: CPU ms of a fresh process ({rounds} interleaved rounds, medians; "
          "peer: the same work through the library; both from bytecode)")
    rows, result, judged = [], {}, []
    for name, pairs_ in samples.items():
        ratio = [c / p for c, p in pairs_]  # one per round: a fresh process of each, a run of its own
        q1, q3 = quartiles(ratio)
        goal = judge(GOALS[name], ratio, unjudged="a --quick run" if quick else "")
        judged.append(goal)
        command_ms, peer_ms = median([c for c, _ in pairs_]) * 1000, median([p for _, p in pairs_]) * 1000
        rows.append([name, f"{command_ms:.0f}", f"{peer_ms:.0f}", f"{median(ratio):.2f}", f"{q1:.2f}-{q3:.2f}",
                     f"{min(ratio):.2f}-{max(ratio):.2f}", f"<= {goal.goal.limit} {goal.verdict}"])
        result[name] = {"ms": command_ms, "peer_ms": peer_ms, "ratio": median(ratio), "ratio_p25": q1,
                        "ratio_p75": q3, "goal": GOALS[name]}
    print(table(["command", "ms", "peer ms", "x peer", "p25-p75", "min-max", "goal"], rows))
    for g in judged:
        print(g.line())
    print()
    return result | {"rounds": rounds, "goals": [g.as_dict() for g in judged]}
