"""The checked trust file beside the installed bundle (scanner/cards/trustfile.py): a process loads the
bundle's keys and its revoked ids from it without parsing the bundle (nor loading NumPy); a file made from
another bundle, another root, cut short or altered is not used; a swap killed half-way leaves the old bundle
serving."""
from __future__ import annotations

import os
import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.truststate import device_state as _state
from support.truststate import run_python as _run

from scanner.base.errors import TrustError
from scanner.cards import keys as keymod
from scanner.cards import trustfile
from scanner.cards.trust import load_device_trust
from sync import trustupdate

REVOKED = [bytes([i % 256, i // 256 % 256]) + os.urandom(14) for i in range(3000)]
LATER = [os.urandom(16) for _ in range(50)]  # revoked from version 2 on


def test_the_installed_bundle_is_loaded_from_its_checked_file_without_numpy(tmp_path, make_bundle_bytes, root_key):
    state = _state(tmp_path, root_key)
    trustupdate.install(state, make_bundle_bytes(version=3, revoked_cards=REVOKED), [root_key.public_key()],
                        min_version=None)
    checked = trustfile.path_for(state / trustupdate.BUNDLE_NAME)
    assert checked.exists()
    code = ("import mmap, sys; from scanner.cards.trust import load_device_trust; "
            "store = load_device_trust(sys.argv[1]); ids = bytes.fromhex(sys.argv[2]); "
            "print(store.version, len(store.revoked_cards), ids[:16] in store.revoked_cards, "
            "ids[16:] in store.revoked_cards, isinstance(store.revoked_cards.blob(), mmap.mmap), "
            "'numpy' in sys.modules)")
    out = _run(code, str(state), (REVOKED[1234] + LATER[0]).hex())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "3000", "True", "False", "True", "False"]
    store = load_device_trust(state)
    assert all(r in store.revoked_cards for r in REVOKED) and not any(r in store.revoked_cards for r in LATER)
    assert store.by_kid and store.bundles[0].digest == trustupdate.current(state, [root_key.public_key()])[1].digest


def test_a_checked_file_of_another_bundle_or_root_is_not_used(tmp_path, make_bundle_bytes, root_key, other_root_key):
    state = _state(tmp_path, root_key)
    roots = [root_key.public_key()]
    trustupdate.install(state, make_bundle_bytes(version=1, revoked_cards=REVOKED), roots, min_version=None)
    checked = trustfile.path_for(state / trustupdate.BUNDLE_NAME)
    old = checked.read_bytes()
    trustupdate.install(state, make_bundle_bytes(version=2, revoked_cards=REVOKED + LATER), roots, min_version=1)
    checked.write_bytes(old)  # version 1's, beside version 2's bundle
    store = load_device_trust(state)
    assert store.version == 2 and LATER[3] in store.revoked_cards
    assert checked.read_bytes() != old  # made anew from the bundle in place
    # the same file is not taken for a bundle of another root: the bundle is checked, and refused
    (state / trustupdate.ROOT_NAME).write_bytes(keymod.public_pem(other_root_key.public_key()))
    with pytest.raises(TrustError) as info:
        load_device_trust(state)
    assert info.value.code == "bundle_wrong_root"


@pytest.mark.parametrize("where", ["head", "index", "ids", "digest", "cut"])
def test_a_damaged_checked_file_is_not_used(tmp_path, make_bundle_bytes, root_key, where, caplog):
    state = _state(tmp_path, root_key)
    trustupdate.install(state, make_bundle_bytes(version=4, revoked_cards=REVOKED), [root_key.public_key()],
                        min_version=None)
    checked = trustfile.path_for(state / trustupdate.BUNDLE_NAME)
    data = bytearray(checked.read_bytes())
    at = {"head": 100, "index": 4096 + 4 * 300, "ids": len(data) - 32 - 16 * 7, "digest": len(data) - 1}.get(where)
    if at is None:
        del data[-40:]
    else:
        data[at] ^= 0x01
    checked.write_bytes(bytes(data))
    with pytest.raises(TrustError) as info:
        trustfile.read(checked, trustfile.file_sha256(state / trustupdate.BUNDLE_NAME),
                       {keymod.kid_of(root_key.public_key())})
    assert info.value.code == "trustfile_corrupt"
    store = load_device_trust(state)  # the bundle itself is opened, and the file made anew
    assert store.version == 4 and all(r in store.revoked_cards for r in REVOKED[::97])
    assert "the bundle is checked again" in caplog.text
    assert trustfile.read(checked, trustfile.file_sha256(state / trustupdate.BUNDLE_NAME),
                          {keymod.kid_of(root_key.public_key())}) is not None


def test_a_swap_killed_half_way_leaves_the_old_bundle_serving(tmp_path, make_bundle_bytes, root_key):
    """The process installing version 2 dies (SIGKILL) after writing the new checked file and before
    the bundle file is replaced: version 1 still serves, with version 1's revocations."""
    state = _state(tmp_path, root_key)
    roots = [root_key.public_key()]
    trustupdate.install(state, make_bundle_bytes(version=1, revoked_cards=REVOKED), roots, min_version=None)
    new = tmp_path / "v2.json"
    new.write_bytes(make_bundle_bytes(version=2, revoked_cards=REVOKED + LATER))
    code = ("import os, signal, sys; from pathlib import Path; from sync import trustupdate; "
            "from scanner.cards.trust import load_root; "
            "write = trustupdate.trustfile.write; "
            "trustupdate.trustfile.write = lambda *a: (write(*a), os.kill(os.getpid(), signal.SIGKILL)); "
            "state = Path(sys.argv[1]); "
            "trustupdate.install(state, Path(sys.argv[2]).read_bytes(), [load_root(state / 'trust-root.pem')], "
            "min_version=1)")
    out = _run(code, str(state), str(new))
    assert out.returncode == -signal.SIGKILL, out.stderr
    store = load_device_trust(state)
    assert store.version == 1 and REVOKED[42] in store.revoked_cards and LATER[0] not in store.revoked_cards
    assert trustupdate.installed(state, roots).version == 1


def test_an_empty_bundle_has_a_checked_file_too(tmp_path, make_bundle_bytes, root_key):
    state = _state(tmp_path, root_key)
    trustupdate.install(state, make_bundle_bytes(version=1), [root_key.public_key()], min_version=None)
    checked = trustfile.path_for(state / trustupdate.BUNDLE_NAME)
    got = trustfile.read(checked, trustfile.file_sha256(state / trustupdate.BUNDLE_NAME),
                         {keymod.kid_of(root_key.public_key())})
    assert got is not None and got.version == 1 and len(got.revoked_cards) == 0 and got.keys


@pytest.fixture(scope="module")
def small_checked(tmp_path_factory, make_bundle_bytes, root_key) -> tuple[bytes, bytes, bytes]:
    """A checked file of a small bundle, the bundle file's SHA-256 and the root's kid."""
    state = _state(tmp_path_factory.mktemp("fuzz"), root_key)
    trustupdate.install(state, make_bundle_bytes(version=5, revoked_cards=REVOKED[:40]), [root_key.public_key()],
                        min_version=None)
    checked = trustfile.path_for(state / trustupdate.BUNDLE_NAME)
    source = trustfile.file_sha256(state / trustupdate.BUNDLE_NAME)
    return checked.read_bytes(), source, keymod.kid_of(root_key.public_key())


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=4),
       truncate=st.one_of(st.none(), st.integers(0, 1 << 20)))
def test_fuzz_a_changed_checked_file_is_refused_with_its_code(small_checked, tmp_path_factory, cuts, truncate):
    data, source, kid = small_checked
    changed = bytearray(data)
    for at, value in cuts:
        changed[at % len(changed)] = value
    if truncate is not None:
        del changed[truncate % len(changed):]
    path = tmp_path_factory.mktemp("f") / "bundle.json.checked"
    path.write_bytes(bytes(changed))
    try:
        got = trustfile.read(path, source, {kid})
    except TrustError as exc:
        assert exc.code == "trustfile_corrupt"
        return
    if bytes(changed) != data:  # the only other outcome: not this bundle's file (its source field changed)
        assert got is None
    else:
        assert got is not None and got.version == 5 and len(got.revoked_cards) == 40
