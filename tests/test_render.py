"""scanner.cards.render: the PNG decodes back to the exact card text; the SVG card is valid, escaped XML."""
from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from hardware.decode import DecoderUnavailable, make_decoder, read_gray, scan_file
from scanner.base.errors import UsageError
from scanner.cards import issuer, keys, render
from scanner.cards.verdict import Holder

SVG = "{http://www.w3.org/2000/svg}"
NAME = "Nguyễn Thị Phương Thảo"
EXPIRES = 1798761599  # 2026-12-31T23:59:59Z: the last second of a UTC day


@pytest.fixture(scope="module")
def card_text() -> str:
    """A realistic signed CK1 card text (~330 characters)."""
    key = keys.generate("EdDSA")
    now = int(time.time())
    spec = issuer.CardSpec("VN-HUE", Holder(NAME, "1985-03-02", "*********123", "vaccinated", "2021-09-01"),
                           now, now + 365 * 86400, card_id=bytes.fromhex("8ea7e724" + "00" * 12))
    text = issuer.issue(spec, key)
    assert text.startswith("CK1:") and 300 <= len(text) <= 400
    return text


def card(text: str, **changes) -> str:
    fields = dict(name=NAME, birth_date="1985-03-02", issuer="VN-HUE", expires_at=EXPIRES,
                  card_id_hex="8ea7e724" + "00" * 12)
    fields.update(changes)
    return render.card_svg(text, **fields)


def texts(root: ET.Element) -> list[str]:
    """Every <text> element's content, its lines joined by spaces."""
    return [" ".join(t.text or "" for t in el.iter(f"{SVG}tspan")) for el in root.iter(f"{SVG}text")]


# ------------------------------------------------------------------ PNG

@pytest.mark.parametrize("name", ["zxing", "pyzbar"])
def test_png_round_trip(tmp_path, card_text, name):
    try:
        decoder = make_decoder(name)
    except DecoderUnavailable as exc:
        pytest.skip(str(exc))
    path = tmp_path / "card.png"
    render.qr_png(card_text, path)
    result = scan_file(path, decoder)
    assert result.error is None
    assert result.codes == (card_text,)


def test_png_geometry(tmp_path, card_text):
    path = tmp_path / "card.png"
    render.qr_png(card_text, path, scale=3, border=4)
    gray = read_gray(path)
    modules = gray.shape[0] // 3
    assert gray.shape[0] == gray.shape[1] and (modules - 8 - 17) % 4 == 0  # a QR size plus the quiet zone
    assert gray[:12].min() == 255 and gray[12:15, 12:15].max() == 0  # white border, dark finder corner


def test_ck1_text_uses_alphanumeric_mode_at_level_m(card_text):
    qr = render._qr(card_text)
    assert qr.mode == "alphanumeric"
    assert qr.error == "M"


def test_other_text_round_trips_as_utf8(tmp_path):
    text = "https://example.vn/thẻ?tên=Nguyễn"
    path = tmp_path / "url.png"
    render.qr_png(text, path)
    assert render._qr(text).mode == "byte"
    assert scan_file(path, make_decoder()).codes == (text,)


def test_png_bad_input(tmp_path):
    with pytest.raises(UsageError):
        render.qr_png("", tmp_path / "empty.png")
    with pytest.raises(UsageError, match="does not fit"):
        render.qr_png("CK1:" + "A" * 5000, tmp_path / "huge.png")
    with pytest.raises(UsageError):
        render.qr_png("CK1:X", tmp_path / "x.png", scale=0)


# ------------------------------------------------------------------ SVG card

def test_card_svg_is_a_credit_card_with_the_details(tmp_path, card_text):
    path = tmp_path / "card.svg"
    svg = card(card_text, path=path)
    data = path.read_bytes()
    assert data.decode("utf-8") == svg
    assert NAME.encode("utf-8") in data  # Vietnamese written as UTF-8, not as entities or '?'
    root = ET.fromstring(data)
    assert root.tag == f"{SVG}svg"
    assert root.get("viewBox") == "0 0 85.6 54"
    assert (root.get("width"), root.get("height")) == ("85.6mm", "54mm")
    assert "Noto Sans" in root.get("font-family") and "sans-serif" in root.get("font-family")
    shown = texts(root)
    assert "THẺ KIỂM SOÁT" in shown and "CHECKPOINT CARD" in shown
    assert NAME in shown
    assert "1985-03-02" in shown
    assert "VN-HUE" in shown
    assert "2026-12-31 UTC" in shown
    assert "8ea7e724" in shown
    assert NAME in root.find(f"{SVG}title").text


def test_expiry_is_a_utc_date_whatever_the_local_zone(monkeypatch, card_text):
    monkeypatch.setenv("TZ", "Asia/Ho_Chi_Minh")
    time.tzset()
    try:
        shown = texts(ET.fromstring(card(card_text)))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert "2026-12-31 UTC" in shown


def test_card_id_may_be_absent_but_not_garbage(card_text):
    assert "—" in texts(ET.fromstring(card(card_text, card_id_hex="")))
    with pytest.raises(UsageError):
        card(card_text, card_id_hex="<b>not hex</b>")


def _modules_from_path(d: str) -> set[tuple[int, int]]:
    """Dark modules (row, col) drawn by segno's path: M/m moves, h strokes one module high."""
    x = y = 0.0
    dark = set()
    for cmd, args in re.findall(r"([MmHh])([^MmHh]*)", d):
        nums = [float(v) for v in args.replace(",", " ").split()]
        if cmd == "M":
            x, y = nums
        elif cmd == "m":
            x, y = x + nums[0], y + nums[1]
        else:
            end = nums[0] if cmd == "H" else x + nums[0]
            dark.update((int(y - 0.5), c) for c in range(int(x), int(end)))
            x = end
    return dark


def test_card_qr_path_is_the_code_and_fits_the_left_side(card_text):
    """Rasterise just the QR path (module grid) and decode it; check where it sits on the card."""
    root = ET.fromstring(card(card_text))
    path = root.find(f"{SVG}path")
    assert path.get("stroke") == "#000"
    dark = _modules_from_path(path.get("d"))
    size = max(max(r, c) for r, c in dark) + 1
    grid = np.full((size + 8, size + 8), 255, np.uint8)
    for r, c in dark:
        grid[r + 4, c + 4] = 0
    assert [c.text for c in make_decoder().decode(np.kron(grid, np.ones((4, 4), np.uint8)))] == [card_text]

    tx, ty, unit = map(float, re.fullmatch(r"translate\(([\d.]+) ([\d.]+)\) scale\(([\d.]+)\)",
                                           path.get("transform")).groups())
    text_x = min(float(t.get("x")) for t in root.iter(f"{SVG}tspan"))
    assert tx - 4 * unit >= 0 and ty - 4 * unit >= 0 and ty + (size + 4) * unit <= 54  # quiet zone on the card
    assert tx + (size + 4) * unit <= text_x  # the quiet zone does not run into the text
    assert size * unit >= 35  # large: at least 35 mm for a ~330-character card


@pytest.mark.parametrize("name, visible", [
    ("<script>alert('x')</script>", "<script>alert('x')</script>"),
    ('Tom & Jerry "quoted" \'single\' ]]> <!-- -->', 'Tom & Jerry "quoted" \'single\' ]]> <!-- -->'),
    ("escape \x1b[31mred\x1b[0m", "escape \\u001b[31mred\\u001b[0m"),
    ("nul\x00byte\x08\x0b\x0c\x7f\x85", "nul\\u0000byte\\u0008\\u000b\\u000c\\u007f\\u0085"),
    ("lone \ud800 surrogate \ufffe \uffff", "lone \\ud800 surrogate \\ufffe \\uffff"),
    ("bidi \u202eevil\u202c and\nnew\tline", "bidi \\u202eevil\\u202c and\\u000anew\\u0009line"),
    ("&amp; &#x0; &lt;", "&amp; &#x0; &lt;"),
])
def test_hostile_names_give_valid_xml(tmp_path, card_text, name, visible):
    path = tmp_path / "hostile.svg"
    svg = card(card_text, name=name, issuer=name, birth_date=name, path=path)
    root = ET.fromstring(path.read_bytes())  # valid XML, written as valid UTF-8
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff\u202a-\u202e]", svg)
    assert visible in root.find(f"{SVG}title").text  # shown escaped, not dropped
    assert "".join(visible.split()) in ["".join(t.split()) for t in texts(root)]  # long words may wrap


def test_long_names_wrap_and_stay_on_the_card(card_text):
    long_name = "Tôn Nữ Thị Ngọc Hoàng Phương Bảo Châu Nguyễn Phúc"
    root = ET.fromstring(card(card_text, name=long_name, issuer="Sở Y tế Thành phố Hồ Chí Minh"))
    name_el = next(el for el in root.iter(f"{SVG}text") if "Tôn" in "".join(el.itertext()))
    spans = list(name_el.iter(f"{SVG}tspan"))
    assert 1 < len(spans) <= 2
    assert " ".join(t.text for t in spans) == long_name
    for span in root.iter(f"{SVG}tspan"):
        assert 0 < float(span.get("y")) < 53
