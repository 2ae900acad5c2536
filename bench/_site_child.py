"""One gate of the site benchmark in its own process (bench/bench_site.py): a real SiteNode on
127.0.0.1 told of every other gate. Commands on stdin: ``scan SEQ`` notes an entry of this gate
(prints ``sent SEQ NS``), ``quit``. Prints ``got DEVICE SEQ NS`` for each other gate's entry as
it arrives (wall clock in ns: the same clock in every process of this machine), and ``ping K NS``
for each bare datagram K on its ping port (the peer: the same delivery without the site's work)."""
from __future__ import annotations

import json
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key

from scanner.appliance import runtime
from scanner.cards.trust import load_root
from scanner.store.entry import Entry
from sync.site import credential as sitecred
from sync.site.node import Settings, SiteNode

_out = threading.Lock()


def say(line: str) -> None:
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main() -> None:
    cfg = json.loads(sys.argv[1])
    root = load_root(cfg["root_pub"])
    key = load_pem_private_key(Path(cfg["key"]).read_bytes(), password=None)
    cred = sitecred.open_credential(Path(cfg["cred"]).read_bytes(), [root])
    settings = Settings(cfg["site"], bytes.fromhex(cfg["secret"]), ("127.0.0.1", cfg["port"]),
                        tuple(("127.0.0.1", p) for p in cfg["peers"]), discovery=False,
                        heartbeat_s=cfg["heartbeat_s"], peer_timeout_s=cfg["peer_timeout_s"])

    def got(events) -> None:
        now = time.time_ns()
        for e in events:
            say(f"got {e.device} {e.seq} {now}")

    node = SiteNode(settings, key, cred, [root], on_events=got)  # type: ignore[arg-type]  # an Ed25519 key file
    ping = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ping.bind(("127.0.0.1", cfg["ping_port"]))

    def pinged() -> None:
        while True:
            try:
                data, _ = ping.recvfrom(64)
            except OSError:
                return
            say(f"ping {data.decode()} {time.time_ns()}")
    threading.Thread(target=pinged, daemon=True).start()
    node.start()
    runtime.tune_for_scanning()  # as the daemon's process runs
    say("ready")
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] == "quit":
            break
        if parts[0] == "peers":
            say(f"peers {sum(p.alive for p in node.peers())}")
        elif parts[0] == "scan":
            seq = int(parts[1])
            entry = Entry(seq, str(uuid.uuid4()), cred.device_id, f"gate-{cfg['port']}", "in",
                          int(time.time() * 1000), "synced", "stdin", "desk", "accept", "ok", "CK1", f"{seq:032x}")
            t = time.time_ns()
            node.note(entry)
            say(f"sent {seq} {t}")
    node.stop()
    ping.close()


if __name__ == "__main__":
    main()
