"""Offline export to a USB stick and import from one, when the stick was prepared by an attacker:
symlinked directories, symlinks planted at the names the export writes, symlinked, hard-linked,
FIFO, device and oversize batch files. Real processes (`checkpoint sync export`, `checkpoint
server import`), a real entry log and a real server database (SQLite); the device is enrolled in
it directly. Nothing outside the stick is written or read; refusals are one clear line each."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support.entries import bulk_fill
from support.servers import enroll_direct

from scanner.base import fsutil
from scanner.cards.keys import create_private_key
from scanner.store.entrylog import EntryLog
from sync.export import EXPORT_SUBDIR, export_pending
from sync.server.imports import MAX_DEPTH, import_dir
from sync.server.storage import open_storage
from sync.state import DeviceConfig, StateFile
from sync.wire import identity, protocol
from sync.wire.batch import read_header

PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n"


@dataclass
class Site:
    storage: object
    db_url: str
    state: Path
    log: EntryLog
    device_id: str


@pytest.fixture
def site(tmp_path):
    """A server database with one enrolled device, and that device's state dir with 60 entries."""
    url = f"sqlite:///{tmp_path / 'server.db'}"
    storage = open_storage(url)
    key, device_id = enroll_direct(storage, "market-east")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    create_private_key(identity.key_path(state), key)
    DeviceConfig(device_id, "market-east", "http://127.0.0.1:9").save(state)
    log = EntryLog(state / "entries.db", device_id=device_id, checkpoint_id="market-east",
                   sealing_key=X25519PrivateKey.generate().public_key(), synchronous="NORMAL", passback_window_s=0)
    bulk_fill(log, 60)
    yield Site(storage, url, state, log, device_id)
    log.close()
    storage.close()


def cli(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "scanner", *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "CHECKPOINT_LANG": "en"}, check=False)
    assert "Traceback" not in r.stderr, r.stderr
    return r


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("linked", ["batches", "device"])
def test_export_refuses_a_symlinked_directory_on_the_stick(site, tmp_path, linked):
    usb = tmp_path / "usb"
    (usb / EXPORT_SUBDIR).mkdir(parents=True)
    elsewhere = tmp_path / "cron.d"
    elsewhere.mkdir()
    link = usb / EXPORT_SUBDIR if linked == "batches" else usb / EXPORT_SUBDIR / site.device_id
    if linked == "batches":
        link.rmdir()
    link.symlink_to(elsewhere)
    r = cli("sync", "export", "--to", str(usb), "--state-dir", str(site.state))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip() == f"checkpoint: error: {link} is a symbolic link: not followed (symlink_refused)"
    assert list(elsewhere.iterdir()) == []
    assert len(site.log.pending(0, 100)) == 60 and StateFile(site.state).load().exported == []


def test_the_directory_the_technician_names_may_be_a_symlink(site, tmp_path):
    """The mount point is the technician's choice (e.g. /media/usb -> /media/usb0); below it nothing is followed."""
    mounted = tmp_path / "usb0"
    mounted.mkdir()
    named = tmp_path / "usb"
    named.symlink_to(mounted)
    r = cli("sync", "export", "--to", str(named), "--state-dir", str(site.state), "--json")
    assert r.returncode == 0, r.stderr
    files = sorted((mounted / EXPORT_SUBDIR / site.device_id).iterdir())
    assert len(files) == 1 and read_header(files[0].read_bytes()).count == 60
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600


def test_export_never_writes_through_a_symlink_planted_at_the_names_it_uses(site, tmp_path):
    dry = export_pending(site.state, site.log, tmp_path / "dry", batch_size=25)  # batch ids are deterministic
    names = [Path(f).name for f in dry.files]
    assert len(names) == 3
    out = tmp_path / "usb" / EXPORT_SUBDIR / site.device_id
    out.mkdir(parents=True)
    victim = tmp_path / "passwd"
    victim.write_bytes(PASSWD)
    for name in names:  # the temporary names the export used to write through (O_CREAT|O_TRUNC)
        (out / f".{name}.{os.getpid()}.tmp").symlink_to(victim)
    (out / names[1]).symlink_to(victim)  # and one final name
    res = export_pending(site.state, site.log, tmp_path / "usb", batch_size=25)
    assert victim.read_bytes() == PASSWD
    assert [Path(f).name for f in res.files] == names
    for f in res.files:
        p = Path(f)
        assert not p.is_symlink() and read_header(p.read_bytes()).device_id == site.device_id


# ---------------------------------------------------------------- import


def test_import_refuses_links_fifos_devices_and_oversize_files(site, tmp_path):
    usb = tmp_path / "usb"
    res = export_pending(site.state, site.log, usb, batch_size=20)  # seq 1-20, 21-40, 41-60
    stick = usb / EXPORT_SUBDIR / site.device_id
    outside = tmp_path / "outside"
    outside.mkdir()
    first = Path(res.files[0])
    kept = outside / first.name  # a genuine batch, now reachable from the stick only through links
    first.rename(kept)
    (stick / first.name).symlink_to(kept)
    (stick / "passwd.ckb").symlink_to("/etc/passwd")
    os.link(kept, stick / "hard.ckb")
    os.mkfifo(stick / "pipe.ckb")  # a read of it would block forever
    (usb / EXPORT_SUBDIR / "other-device").symlink_to(outside)
    with open(stick / "big.ckb", "wb") as fh:  # sparse: large, yet no disk used
        fh.truncate(protocol.MAX_BATCH_BYTES + 1)
    expected = {first.name: fsutil.SYMLINK, "passwd.ckb": fsutil.SYMLINK, "hard.ckb": fsutil.HARD_LINK,
                "pipe.ckb": fsutil.NOT_REGULAR, "other-device": fsutil.SYMLINK, "big.ckb": fsutil.TOO_LARGE}
    if os.geteuid() == 0:
        os.mknod(stick / "zero.ckb", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero: endless
        expected["zero.ckb"] = fsutil.NOT_REGULAR
    r = cli("server", "import", "--db", site.db_url, str(usb))
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.startswith(f"{len(expected) - 1 + 2} files: 2 batches, 40 entries, 40 stored")
    refused = {}
    for line in r.stderr.splitlines():
        path, code, message = line.removeprefix("refused ").split(": ", 2)
        refused[Path(path).name] = code
        assert message.startswith(path)  # the message names the file
    assert refused == expected
    assert sorted(site.storage.entry_hashes(site.device_id)) == list(range(21, 61))


# ---------------------------------------------------------------- fuzz


@contextmanager
def deadline(seconds: float):
    """Fail (instead of hanging) if the block takes longer, e.g. blocked opening a FIFO."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


KINDS = ("genuine", "flipped", "noise", "empty", "symlink_genuine", "symlink_inside", "dangling", "loop",
         "fifo", "hard_link", "dir_link", "dir")
NAMES = st.sampled_from(["a.ckb", "b.ckb", "c.ckb", "x", ".hidden.ckb", "d"])
ENTRY = st.tuples(st.lists(st.sampled_from(["p", "q"]), max_size=MAX_DEPTH + 2), NAMES, st.sampled_from(KINDS),
                  st.binary(max_size=300), st.integers(0, 10_000))


@pytest.fixture(scope="module")
def fuzz_site(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{base / 'server.db'}"
    storage = open_storage(url)
    key, device_id = enroll_direct(storage, "market-east")
    state = base / "state"
    state.mkdir(mode=0o700)
    create_private_key(identity.key_path(state), key)
    DeviceConfig(device_id, "market-east", "http://127.0.0.1:9").save(state)
    with EntryLog(state / "entries.db", device_id=device_id, checkpoint_id="market-east",
                  sealing_key=X25519PrivateKey.generate().public_key(), synchronous="NORMAL",
                  passback_window_s=0) as log:
        bulk_fill(log, 30)
        res = export_pending(state, log, base / "made", batch_size=10)
    genuine = [Path(f).read_bytes() for f in res.files]
    yield storage, base, genuine
    storage.close()


def make(p: Path, kind: str, genuine: list[bytes], noise: bytes, flip: int, stick: Path, outside: Path) -> None:
    if kind in ("genuine", "flipped"):
        data = bytearray(genuine[flip % len(genuine)])
        if kind == "flipped":
            data[flip % len(data)] ^= 0x40
        p.write_bytes(bytes(data))
    elif kind == "noise":
        p.write_bytes(noise)
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "symlink_genuine":
        p.symlink_to(outside / "real.ckb")
    elif kind == "symlink_inside":
        p.symlink_to(stick)
    elif kind == "dangling":
        p.symlink_to(outside / "gone")
    elif kind == "loop":
        p.symlink_to(p)
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "hard_link":
        os.link(outside / "real.ckb", p)
    elif kind == "dir_link":
        p.symlink_to(outside)
    else:
        p.mkdir()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(entries=st.lists(ENTRY, max_size=10))
def test_fuzz_import_of_hostile_sticks(fuzz_site, entries):
    storage, base, genuine = fuzz_site
    stick = Path(tempfile.mkdtemp(dir=base, prefix="stick-"))
    outside = Path(tempfile.mkdtemp(dir=base, prefix="outside-"))
    (outside / "real.ckb").write_bytes(genuine[0])
    links, special = set(), set()
    for dirs, name, kind, noise, flip in entries:
        d = stick
        for part in dirs:  # made only through real directories, never through a link made before
            d = d / part
            if d.is_symlink() or (d.exists() and not d.is_dir()):
                break
            d.mkdir(exist_ok=True)
        else:
            p = d / name
            if p.exists() or p.is_symlink():
                continue
            make(p, kind, genuine, noise, flip, stick, outside)
            if p.is_symlink():
                links.add(p)
            elif kind in ("fifo", "hard_link"):
                special.add(p)
    with deadline(60):
        res = import_dir(storage, stick)
    refused = {Path(path): code for path, code, _ in res.refused}
    for code in sorted(set(refused.values())) + (["imported"] if res.batches else []):
        event(code)  # --hypothesis-show-statistics: how often each case came up
    for p in links:  # every symlink is refused, named, never followed (one below too deep a tree is not seen)
        if len(p.relative_to(stick).parts) <= MAX_DEPTH + 1:
            assert refused.get(p) == fsutil.SYMLINK, (p, res.refused)
    for p in special:
        if p.name.endswith(".ckb") and len(p.relative_to(stick).parts) <= MAX_DEPTH + 1:
            assert refused.get(p) in (fsutil.NOT_REGULAR, fsutil.HARD_LINK), (p, res.refused)
    files_refused = [p for p, code in refused.items() if p.name.endswith(".ckb") and code != "too_deep"]
    assert res.batches + len(files_refused) == res.files
    assert res.stored + res.duplicates == res.entries == 10 * res.batches  # only whole genuine batches
    assert (outside / "real.ckb").read_bytes() == genuine[0]
