"""Format-2 (streamed) trust bundles (scanner/cards/bundle.py): the revoked ids travel as a binary
part whose SHA-256 the signed head carries, checked chunk by chunk as they are read; forged,
truncated, reordered, oversized and unsorted parts are refused with their codes; a format-2 head
cannot pass as a format-1 bundle; the device installs one from a file, its ids going straight into
the checked file, and a swap killed half-way leaves the old bundle serving; deltas between two
format-2 bundles are merged as the installed file is read."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.truststate import device_state as _state
from support.truststate import run_python as _run

from scanner.base.errors import TrustError
from scanner.cards import bundle as bundlemod
from scanner.cards import keys as keymod
from scanner.cards import trustfile
from scanner.cards.bundle import HEAD_TAG, IDS_TAG, MAGIC2, PART, BundleKey, StreamReader, make_bundle, open_bundle
from scanner.cards.trust import load_device_trust, load_trust
from sync import trustupdate
from sync.wire import delta as deltamod

REVOKED = sorted(os.urandom(16) for _ in range(150_000))  # more than two chunks of 65,536 ids
LATER = sorted(os.urandom(16) for _ in range(40))
NOW = 1_750_000_000


@pytest.fixture(scope="module")
def other_key():
    k = ed25519.Ed25519PrivateKey.generate()
    return BundleKey(keymod.kid_of(k.public_key()), "EdDSA", "VN-SGN", k.public_key())


def _make(root_key, bundle_keys, version=3, cards=REVOKED, **kw) -> bytes:
    return make_bundle(root_key, version=version, issued_at=NOW, expires_at=NOW + 86400, keys=bundle_keys,
                       revoked_cards=cards, fmt=2, **kw)


def _parts(data: bytes) -> tuple[bytes, bytes]:
    """The HEAD and IDS parts' contents of a well-formed file."""
    at = len(MAGIC2)
    _, head_len = PART.unpack_from(data, at)
    head = data[at + PART.size:at + PART.size + head_len]
    at += PART.size + head_len
    _, ids_len = PART.unpack_from(data, at)
    return head, data[at + PART.size:at + PART.size + ids_len]


def _file(head: bytes, ids: bytes) -> bytes:
    return MAGIC2 + PART.pack(HEAD_TAG, len(head)) + head + PART.pack(IDS_TAG, len(ids)) + ids


def _signed_head(root_key, ids: bytes, **over) -> bytes:
    body = {"format": 2, "version": 3, "issued_at": NOW, "expires_at": NOW + 86400, "keys": [],
            "revoked_cards_count": len(ids) // 16, "revoked_cards_sha256": hashlib.sha256(ids).hexdigest(),
            "revoked_kids": [], **over}
    return bundlemod._envelope(root_key, json.dumps(body, separators=(",", ":")).encode())


def code_of(data: bytes, roots, **kw) -> str:
    with pytest.raises(TrustError) as info:
        open_bundle(data, roots, **kw)
    return info.value.code


def test_round_trip_and_the_file_is_the_ids_not_their_hex(root_key, bundle_keys):
    data = _make(root_key, bundle_keys, revoked_kids=[b"kid-gone"])
    b = open_bundle(data, [root_key.public_key()])
    assert b.version == 3 and len(b.revoked_cards) == len(REVOKED) and b.keys[0].kid == bundle_keys[0].kid
    assert all(r in b.revoked_cards for r in REVOKED[::997]) and LATER[0] not in b.revoked_cards
    assert b.revoked_kids == {b"kid-gone"}
    assert len(data) < 16 * len(REVOKED) + 4096  # 16 bytes an id (format 1: 35 in the payload, 47 in the file)
    assert code_of(data, [root_key.public_key()], min_version=3) == "bundle_rollback"


def test_wrong_root_and_bad_signature(root_key, other_root_key, bundle_keys):
    data = _make(root_key, bundle_keys)
    assert code_of(data, [other_root_key.public_key()]) == "bundle_wrong_root"
    head, ids = _parts(data)
    doc = json.loads(head)
    doc["sig"] = doc["sig"][:4] + ("A" if doc["sig"][4] != "A" else "B") + doc["sig"][5:]
    assert code_of(_file(json.dumps(doc).encode(), ids), [root_key.public_key()]) == "bundle_bad_signature"


def test_a_forged_ids_part_is_refused(root_key, bundle_keys):
    head, ids = _parts(_make(root_key, bundle_keys))
    forged = bytearray(ids)
    forged[16 * 70_000:16 * 70_001] = REVOKED[70_000][:15] + bytes([REVOKED[70_000][15] ^ 1])  # one id dropped...
    forged = bytes(forged) if bytes(forged[16 * 70_000:16 * 70_001]) < REVOKED[70_001] else ids[:-16] + b"\xff" * 16
    assert code_of(_file(head, forged), [root_key.public_key()]) in ("bundle_ids_digest", "bundle_ids_unsorted")
    dropped = ids[:16 * 5] + ids[16 * 6:] + b"\xff" * 16  # still sorted, as many: only the digest tells
    assert code_of(_file(head, dropped), [root_key.public_key()]) == "bundle_ids_digest"


@pytest.mark.parametrize("cut", [0, len(MAGIC2) + 2, len(MAGIC2) + PART.size + 10, -16 * 70_000 - 7, -1])
def test_a_truncated_file_is_refused(root_key, bundle_keys, cut):
    data = _make(root_key, bundle_keys)
    head, _ = _parts(data)
    end = cut if cut > 0 else len(data) + cut
    if cut == 0:
        end = len(MAGIC2) + PART.size + len(head)  # exactly after the HEAD part: the IDS part is missing
    assert code_of(data[:end], [root_key.public_key()]) == "bundle_truncated"


def test_reordered_or_extra_parts_are_refused(root_key, bundle_keys):
    data = _make(root_key, bundle_keys)
    head, ids = _parts(data)
    roots = [root_key.public_key()]
    ids_first = MAGIC2 + PART.pack(IDS_TAG, len(ids)) + ids + PART.pack(HEAD_TAG, len(head)) + head
    assert code_of(ids_first, roots) == "bundle_part_order"
    two_heads = MAGIC2 + PART.pack(HEAD_TAG, len(head)) + head + PART.pack(HEAD_TAG, len(head)) + head
    assert code_of(two_heads, roots) == "bundle_part_order"
    assert code_of(data + PART.pack(IDS_TAG, 16) + ids[:16], roots) == "bundle_part_order"
    assert code_of(data + b"\n", roots) == "bundle_part_order"
    assert code_of(MAGIC2 + PART.pack(b"KEYS", len(head)) + head, roots) == "bundle_part_order"


def test_oversized_parts_are_refused_before_they_are_read(root_key, bundle_keys):
    roots = [root_key.public_key()]
    data = _make(root_key, bundle_keys, cards=REVOKED[:100])
    head, ids = _parts(data)
    huge_head = MAGIC2 + PART.pack(HEAD_TAG, bundlemod.MAX_HEAD_BYTES + 1) + head
    assert code_of(huge_head, roots) == "bundle_part_oversized"
    longer = MAGIC2 + PART.pack(HEAD_TAG, len(head)) + head + PART.pack(IDS_TAG, len(ids) + 16) + ids + ids[:16]
    assert code_of(longer, roots) == "bundle_part_oversized"
    absurd = MAGIC2 + PART.pack(HEAD_TAG, len(head)) + head + PART.pack(IDS_TAG, 2**62) + ids
    assert code_of(absurd, roots) == "bundle_part_oversized"
    too_many = _signed_head(root_key, b"", revoked_cards_count=2**40)
    assert code_of(_file(too_many, b""), roots) == "bundle_part_oversized"


def test_unsorted_or_repeated_ids_are_refused_even_when_signed(root_key):
    roots = [root_key.public_key()]
    for ids in (REVOKED[1] + REVOKED[0], REVOKED[0] + REVOKED[0],
                b"".join(REVOKED[:70_000]) + REVOKED[10] + b"".join(REVOKED[70_000:70_010])):  # across a chunk
        assert code_of(_file(_signed_head(root_key, ids), ids), roots) == "bundle_ids_unsorted"


def test_a_format_2_head_cannot_pass_as_a_format_1_bundle(root_key, bundle_keys):
    """Taking the signed head out of its file would otherwise give a bundle with no revoked ids."""
    head, _ = _parts(_make(root_key, bundle_keys))
    assert code_of(head, [root_key.public_key()]) == "bundle_format"
    v1 = make_bundle(root_key, version=3, issued_at=NOW, expires_at=NOW + 86400, keys=bundle_keys)
    assert code_of(_file(v1, b""), [root_key.public_key()]) == "bundle_format"


_SMALL: dict = {}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 10**6)), insert=st.one_of(st.none(), st.binary(min_size=1, max_size=24)))
def test_fuzz_the_parser_refuses_with_a_code_or_reads_the_same_bundle(root_key, bundle_keys, edits, cut, insert):
    if "data" not in _SMALL:
        _SMALL["data"] = _make(root_key, bundle_keys, cards=REVOKED[:200])
        _SMALL["bundle"] = open_bundle(_SMALL["data"], [root_key.public_key()])
    data = bytearray(_SMALL["data"])
    for at, value in edits:
        data[at % len(data)] = value
    if insert is not None:
        at = (cut or 0) % len(data)
        data[at:at] = insert
    elif cut is not None:
        del data[cut % len(data):]
    roots = [root_key.public_key()]
    def streamed() -> list[bytes]:
        return list(StreamReader(io.BytesIO(bytes(data)), roots).ids())
    for read in (lambda: open_bundle(bytes(data), roots), streamed):
        try:
            got = read()
        except TrustError as exc:
            assert exc.code.startswith("bundle_"), exc.code
            continue
        if isinstance(got, list):
            got = b"".join(got)
            assert got == _SMALL["bundle"].revoked_cards.blob()
        else:
            assert got.digest == _SMALL["bundle"].digest
            assert got.revoked_cards.blob() == _SMALL["bundle"].revoked_cards.blob()


def test_installed_from_a_file_its_ids_go_into_the_checked_file(tmp_path, root_key, bundle_keys):
    state = _state(tmp_path, root_key)
    roots = [root_key.public_key()]
    download = trustupdate.download_path(state)
    download.write_bytes(_make(root_key, bundle_keys))
    b = trustupdate.install_file(state, download, roots, min_version=None)
    assert b.version == 3 and len(b.revoked_cards) == len(REVOKED) and not download.exists()
    assert trustfile.path_for(state / trustupdate.BUNDLE_NAME).exists()
    code = ("import mmap, sys; from scanner.cards.trust import load_device_trust; "
            "store = load_device_trust(sys.argv[1]); ids = bytes.fromhex(sys.argv[2]); "
            "print(store.version, len(store.revoked_cards), ids[:16] in store.revoked_cards, "
            "ids[16:] in store.revoked_cards, isinstance(store.revoked_cards.blob(), mmap.mmap), "
            "'numpy' in sys.modules)")
    out = _run(code, str(state), (REVOKED[123_456] + LATER[0]).hex())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", str(len(REVOKED)), "True", "False", "True", "False"]
    trustfile.path_for(state / trustupdate.BUNDLE_NAME).unlink()  # made again, streamed, when missing
    assert len(load_device_trust(state).revoked_cards) == len(REVOKED)
    assert trustfile.path_for(state / trustupdate.BUNDLE_NAME).exists()
    for name in ("v1.json", "v2.bin"):  # `verify --trust FILE` takes either format
        path = tmp_path / name
        path.write_bytes(_make(root_key, bundle_keys, cards=LATER) if name == "v2.bin" else
                         make_bundle(root_key, version=3, issued_at=NOW, expires_at=NOW + 86400, keys=bundle_keys,
                                     revoked_cards=LATER))
        assert LATER[3] in load_trust([path], roots).revoked_cards


def test_a_refused_file_leaves_the_installed_bundle(tmp_path, root_key, bundle_keys):
    state = _state(tmp_path, root_key)
    roots = [root_key.public_key()]
    download = trustupdate.download_path(state)
    download.write_bytes(_make(root_key, bundle_keys, version=1))
    trustupdate.install_file(state, download, roots, min_version=None)
    before = (state / trustupdate.BUNDLE_NAME).read_bytes()
    head, ids = _parts(_make(root_key, bundle_keys, version=2))
    download.write_bytes(_file(head, ids[:-16] + b"\xff" * 16))
    with pytest.raises(TrustError) as info:
        trustupdate.install_file(state, download, roots, min_version=1)
    assert info.value.code == "bundle_ids_digest" and not download.exists()
    assert (state / trustupdate.BUNDLE_NAME).read_bytes() == before
    assert trustupdate.installed(state, roots).version == 1


def test_a_swap_killed_half_way_leaves_the_old_bundle_serving(tmp_path, root_key, bundle_keys):
    """The process installing version 2 dies (SIGKILL) after the new checked file is in place and
    before the bundle file is renamed: version 1 still serves, with version 1's revocations."""
    state = _state(tmp_path, root_key)
    roots = [root_key.public_key()]
    download = trustupdate.download_path(state)
    download.write_bytes(_make(root_key, bundle_keys, version=1))
    trustupdate.install_file(state, download, roots, min_version=None)
    download.write_bytes(_make(root_key, bundle_keys, version=2, cards=REVOKED + LATER))
    code = ("import os, signal, sys; from pathlib import Path; from sync import trustupdate; "
            "from scanner.cards.trust import load_root; "
            "check = trustupdate.trustfile.check_streamed; "
            "trustupdate.trustfile.check_streamed = "
            "lambda *a, **k: (check(*a, **k), os.kill(os.getpid(), signal.SIGKILL)); "
            "state = Path(sys.argv[1]); "
            "trustupdate.install_file(state, trustupdate.download_path(state), [load_root(state / 'trust-root.pem')], "
            "min_version=1)")
    out = _run(code, str(state))
    assert out.returncode == -signal.SIGKILL, out.stderr
    store = load_device_trust(state)
    assert store.version == 1 and REVOKED[42] in store.revoked_cards and LATER[0] not in store.revoked_cards
    assert trustupdate.installed(state, roots).version == 1


def test_a_streamed_delta_makes_the_exact_new_file(tmp_path, root_key, bundle_keys, other_key):
    roots = [root_key.public_key()]
    old = _make(root_key, bundle_keys, version=1)
    kept = REVOKED[:5] + REVOKED[6:65_536] + REVOKED[65_540:]  # removals in two chunks, additions in all
    new = _make(root_key, bundle_keys[1:] + [other_key], version=2, cards=kept + LATER, revoked_kids=[b"abcdefgh"])
    delta = deltamod.make_delta(root_key, old, new)
    assert delta is not None and len(delta) < 8192
    assert deltamod.make_delta(root_key, make_bundle(root_key, version=1, issued_at=NOW, expires_at=NOW + 9,
                                                     keys=bundle_keys), new) is None  # across formats: full only
    state = _state(tmp_path, root_key)
    download = trustupdate.download_path(state)
    download.write_bytes(old)
    cur = trustupdate.install_file(state, download, roots, min_version=None)
    d = deltamod.open_any_delta(delta, roots)
    assert isinstance(d, deltamod.StreamedDelta)
    b = trustupdate.install_streamed_delta(state, cur, d, roots)
    assert (state / trustupdate.BUNDLE_NAME).read_bytes() == new
    assert b.version == 2 and len(b.revoked_cards) == len(kept) + len(LATER) and REVOKED[5] not in b.revoked_cards
    assert LATER[7] in b.revoked_cards and b.revoked_kids == {b"abcdefgh"}


def test_a_streamed_delta_that_does_not_make_the_signed_ids_is_refused(tmp_path, root_key, bundle_keys):
    roots = [root_key.public_key()]
    old = _make(root_key, bundle_keys, version=1)
    new = _make(root_key, bundle_keys, version=2, cards=REVOKED + LATER)
    delta = deltamod.make_delta(root_key, old, new)
    assert delta is not None
    good = deltamod.open_any_delta(delta, roots)
    assert isinstance(good, deltamod.StreamedDelta)
    state = _state(tmp_path, root_key)
    download = trustupdate.download_path(state)
    download.write_bytes(old)
    cur = trustupdate.install_file(state, download, roots, min_version=None)
    def changed(removed, added, version=good.from_version):
        return deltamod.StreamedDelta(version, good.from_digest, good.head, removed, added)
    for bad in (changed([], good.cards_added[1:]), changed([REVOKED[9]], good.cards_added),
                changed([], good.cards_added + [b"\xff" * 16]), changed([], [REVOKED[3]]),
                changed([], good.cards_added, version=0)):
        with pytest.raises(deltamod.DeltaError):
            trustupdate.install_streamed_delta(state, cur, bad, roots)
        assert trustupdate.installed(state, roots).version == 1 and not download.exists()
    assert (state / trustupdate.BUNDLE_NAME).read_bytes() == old
