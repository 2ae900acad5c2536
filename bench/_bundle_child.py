"""One trust-bundle load in a fresh process, for clean memory figures (run by bench_bundle).

    python -m bench._bundle_child MODE FILE ROOT_HEX REPEAT

MODE is "open" (scanner.cards.bundle.open_bundle: signature check and parsing), "b64" (peer:
json.loads of the file + base64 decode of the payload) or "b64+json" (the same, plus json.loads of
the payload). Prints one JSON line: seconds of each load, and RSS figures of the first load
(bytes above the RSS just before it): delta while the result is still held, and peak.
"""
from __future__ import annotations

import base64
import gc
import json
import sys
import time

from cryptography.hazmat.primitives.asymmetric import ed25519

from scanner.cards.bundle import open_bundle


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not allowed here."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peer(data: bytes, with_json: bool):
    outer = json.loads(data)
    payload = base64.b64decode(outer["payload"])
    return json.loads(payload) if with_json else payload


def main() -> None:
    mode, path, root_hex, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    root = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(root_hex))
    with open(path, "rb") as fh:
        data = fh.read()
    if mode == "open":
        def load():
            return open_bundle(data, [root])
    elif mode in ("b64", "b64+json"):
        def load():
            return _peer(data, mode == "b64+json")
    else:
        raise SystemExit(f"unknown mode {mode}")
    gc.collect()
    reset = _reset_peak()
    before = _status()
    t0 = time.perf_counter()
    result = load()
    times = [time.perf_counter() - t0]
    after = _status()
    peak = after["VmHWM"] - before["VmRSS"] if reset or after["VmHWM"] > before["VmHWM"] else None
    out = {"mode": mode, "rss_before": before["VmRSS"], "rss_delta": after["VmRSS"] - before["VmRSS"],
           "peak_delta": peak, "file_bytes": len(data)}
    if mode == "open":
        out["revoked"] = len(result.revoked_cards)
        out["nbytes"] = result.revoked_cards.nbytes()
    del result
    for _ in range(repeat - 1):
        gc.collect()
        t0 = time.perf_counter()
        result = load()
        times.append(time.perf_counter() - t0)
        del result
    out["times"] = times
    print(json.dumps(out))


if __name__ == "__main__":
    main()
