"""The project's one atomic write and its symlink-proof directory walk (scanner/base/fsutil.py), on
real files: a writer SIGKILLed mid-write, the order of fsyncs and the rename, planted symlinks,
FIFOs and hard links; and every place that writes a file goes through it."""
from __future__ import annotations

import ast
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from support.entries import bulk_fill
from support.paths import ROOT as REPO

from scanner.appliance.clockguard import ClockGuard
from scanner.base import fsutil
from scanner.base.fsutil import (
    AtomicFile,
    Dir,
    UnsafePathError,
    atomic_write,
    write_output,
)
from scanner.cards.keys import create_private_key
from scanner.store.entrylog import EntryLog
from sync.server.storage import open_storage
from sync.state import DeviceConfig


def test_a_writer_killed_mid_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "sync-state.json"
    target.write_bytes(b"old and whole\n")
    child = textwrap.dedent(f"""
        import sys, time
        from scanner.base.fsutil import AtomicFile
        f = AtomicFile.at({str(target)!r}, 0o600)
        with f as fh:
            fh.write(b"new " * 1_000_000)  # 4 MB of the new content, not all of it
            fh.flush()
            print("half", flush=True)
            time.sleep(120)
            fh.write(b"end\\n")
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "half"
        temps = [p for p in tmp_path.iterdir() if p.name != target.name]
        assert len(temps) == 1 and temps[0].stat().st_size == 4_000_000  # it really was mid-write
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
        proc.stdout.close()
    assert target.read_bytes() == b"old and whole\n"
    assert temps[0].name.startswith(".sync-state.json.") and temps[0].name.endswith(".tmp")
    atomic_write(target, b"next\n", 0o600)  # the leftover does not get in the way
    assert target.read_bytes() == b"next\n"


def _write_with(writer: str, directory: Path) -> Path:
    if writer == "atomic_write":
        atomic_write(directory / "bundle.json", b"{}\n")
        return directory / "bundle.json"
    if writer == "clock":
        ClockGuard(directory).save()
        return directory / "clock.json"
    if writer == "device_key":
        assert create_private_key(directory / "device.key", ed25519.Ed25519PrivateKey.generate())
        return directory / "device.key"
    DeviceConfig("d-1", "gate", "https://central.example.vn").save(directory)
    return directory / "device.json"


@pytest.mark.parametrize("writer", ["atomic_write", "clock", "device_key", "device_config"])
def test_file_fsync_then_rename_then_directory_fsync(tmp_path, monkeypatch, writer):
    """Observed, not replaced: os.fsync, rename and link are wrapped to record what they were given."""
    calls = []
    real = {name: getattr(os, name) for name in ("fsync", "rename", "replace", "link")}

    def fsync(fd):
        st = os.fstat(fd)
        calls.append(("fsync", "dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        return real["fsync"](fd)

    def recorder(name):
        def call(src, dst, **kw):
            calls.append(("rename" if name in ("rename", "replace") else name, os.fspath(src), os.fspath(dst)))
            return real[name](src, dst, **kw)
        return call

    monkeypatch.setattr(os, "fsync", fsync)
    for name in ("rename", "replace", "link"):
        monkeypatch.setattr(os, name, recorder(name))
    path = _write_with(writer, tmp_path)
    monkeypatch.undo()
    assert [c[0] for c in calls] == ["fsync", "link" if writer == "device_key" else "rename", "fsync"], calls
    assert calls[0][1:] == ("file", path.stat().st_ino)  # the file that is now there
    assert calls[1][2] == path.name and calls[1][1].startswith(f".{path.name}.")
    assert calls[2][1:] == ("dir", tmp_path.stat().st_ino)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_never_writes_through_a_symlink_and_gets_exactly_its_mode(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    old = os.umask(0o077)
    try:
        (tmp_path / "bundle.json").symlink_to(victim)
        atomic_write(tmp_path / "bundle.json", b"new", 0o644)
    finally:
        os.umask(old)
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "bundle.json").is_symlink() and (tmp_path / "bundle.json").read_bytes() == b"new"
    assert stat.S_IMODE((tmp_path / "bundle.json").stat().st_mode) == 0o644  # not cut by the umask


def test_create_only_keeps_the_existing_file(tmp_path):
    key = tmp_path / "device.key"
    assert atomic_write(key, b"first", 0o600, replace=False) is True
    assert atomic_write(key, b"second", 0o600, replace=False) is False
    assert key.read_bytes() == b"first" and sorted(p.name for p in tmp_path.iterdir()) == ["device.key"]
    (tmp_path / "dangling.key").symlink_to(tmp_path / "nowhere")
    assert atomic_write(tmp_path / "dangling.key", b"x", 0o600, replace=False) is False
    assert not (tmp_path / "nowhere").exists()


def test_an_exception_in_the_block_leaves_nothing(tmp_path):
    target = tmp_path / "report.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), AtomicFile.output(target, encoding="utf-8") as fh:
        fh.write("half")
        raise RuntimeError("disk pulled")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.csv"]


def test_output_files_refuse_symlinks_and_special_files(tmp_path):
    victim = tmp_path / "shadow"
    victim.write_text("root:*:19000::::::\n")
    link = tmp_path / "out.csv"
    link.symlink_to(victim)
    with pytest.raises(UnsafePathError) as info:
        write_output(link, b"report")
    assert info.value.code == fsutil.SYMLINK and "symbolic link" in str(info.value)
    assert isinstance(info.value, OSError)  # every file-system error handler handles it
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(UnsafePathError) as info:
        write_output(tmp_path / "pipe", b"report")
    assert info.value.code == fsutil.NOT_REGULAR and "FIFO" in str(info.value)
    assert victim.read_text() == "root:*:19000::::::\n"
    plain = tmp_path / "plain.csv"
    plain.write_text("old")
    write_output(plain, b"new")
    assert plain.read_bytes() == b"new" and stat.S_IMODE(plain.stat().st_mode) == 0o600


def test_subdirectories_are_entered_without_following_symlinks(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stick = tmp_path / "stick"
    stick.mkdir()
    (stick / "linked").symlink_to(elsewhere)
    (stick / "file").write_text("x")
    with Dir.open(stick) as top:
        with pytest.raises(UnsafePathError) as info:
            top.subdir("linked", create_mode=0o700)
        assert info.value.code == fsutil.SYMLINK and str(stick / "linked") in str(info.value)
        with pytest.raises(UnsafePathError) as info:
            top.subdir("file")
        assert info.value.code == fsutil.NOT_A_DIRECTORY
        for bad in ("..", ".", "a/b", ""):
            with pytest.raises(UnsafePathError) as info:
                top.subdir(bad, create_mode=0o700)
            assert info.value.code == fsutil.BAD_NAME
        with top.subdir("made", create_mode=0o700) as made:
            made.write("f", b"data", 0o600)
    assert (stick / "made" / "f").read_bytes() == b"data"
    assert stat.S_IMODE((stick / "made").stat().st_mode) == 0o700
    assert list(elsewhere.iterdir()) == []


def test_reads_refuse_links_fifos_and_oversize_files(tmp_path):
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    d = tmp_path / "d"
    d.mkdir()
    (d / "ok").write_bytes(b"12345")
    (d / "sym").symlink_to(outside)
    os.link(outside, d / "hard")
    os.mkfifo(d / "fifo")  # opened for reading, this would block: it is never opened
    (d / "big").write_bytes(b"x" * 6)
    with Dir.open(d) as top:
        assert top.read("ok", 5) == b"12345"
        for name, code in (("sym", fsutil.SYMLINK), ("hard", fsutil.HARD_LINK), ("fifo", fsutil.NOT_REGULAR),
                           ("big", fsutil.TOO_LARGE)):
            with pytest.raises(UnsafePathError) as info:
                top.read(name, 5)
            assert info.value.code == code, name


WRITERS = {"O_TRUNC", "replace", "write_text", "write_bytes"}
NOT_FILES = {"scanner/cli/helptext.py write_text"}  # click's HelpFormatter.write_text lays out help, writes no file


def test_every_file_write_goes_through_fsutil():
    """No module but fsutil truncates files in place or renames temporary files of its own."""
    found = []
    for root in ("scanner", "sync", "hardware"):
        for path in sorted((REPO / root).rglob("*.py")):
            if path.name == "fsutil.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Attribute) and node.attr in WRITERS and not (
                        node.attr == "replace" and not (isinstance(node.value, ast.Name) and node.value.id == "os")):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.attr}")
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open"
                        and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
                        and any(c in str(node.args[1].value) for c in "wax")):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} open(..., {node.args[1].value!r})")
    assert [f for f in found if f"{f.split(':')[0]} {f.split(' ')[-1]}" not in NOT_FILES] == []


# ---------------------------------------------------------------- files a person names


def run_cli(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "scanner", *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "CHECKPOINT_LANG": "en"}, check=False)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def test_output_files_named_on_the_command_line_refuse_a_planted_symlink(tmp_path):
    db = tmp_path / "entries.db"
    with EntryLog(db, device_id="dev-1", checkpoint_id="gate", sealing_key=X25519PrivateKey.generate().public_key(),
                  synchronous="NORMAL") as log:
        bulk_fill(log, 3)
    server_db = f"sqlite:///{tmp_path / 'server.db'}"
    open_storage(server_db).close()
    victim = tmp_path / "shadow"
    victim.write_text("root:*:19000::::::\n")
    link = tmp_path / "report.csv"
    link.symlink_to(victim)
    (tmp_path / "k.key").symlink_to(victim)
    for args in (["log", "export", "--db", str(db), "--format", "csv", "-o", str(link)],
                 ["server", "trace", "--db", server_db, "--card", "00" * 16, "--no-holders", "--out", str(link)],
                 ["issuer", "keygen", "--out", str(tmp_path / "k"), "--force"]):
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "is a symbolic link: not followed" in r.stderr, args
        assert victim.read_text() == "root:*:19000::::::\n", args
    plain = tmp_path / "plain.jsonl"
    plain.write_text("old\n")
    plain.chmod(0o644)
    r = run_cli("log", "export", "--db", str(db), "-o", str(plain))
    assert r.returncode == 0 and r.stderr.strip() == "3 entries exported"
    assert len(plain.read_text().splitlines()) == 3 and stat.S_IMODE(plain.stat().st_mode) == 0o600


def test_a_log_is_appended_to_and_never_written_through_a_symlink(tmp_path):
    log = tmp_path / "daemon.log"
    for line in ("one\n", "two\n"):
        with fsutil.open_log(log) as fh:
            fh.write(line)
    assert log.read_text() == "one\ntwo\n" and stat.S_IMODE(log.stat().st_mode) == 0o600
    target = tmp_path / "elsewhere"
    target.write_text("kept\n")
    (tmp_path / "link.log").symlink_to(target)
    with pytest.raises(OSError):
        fsutil.open_log(tmp_path / "link.log")
    assert target.read_text() == "kept\n"
    os.mkfifo(tmp_path / "fifo.log")
    with pytest.raises(OSError):
        fsutil.open_log(tmp_path / "fifo.log")
