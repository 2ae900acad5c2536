"""`checkpoint server trace` finds the person as the console does: from the card's id, from the
card's text (its QR content) or from a photo of the card, decoded by the devices' decoder and
verified against the trust bundle the server publishes; a forged card, a photo without a code and
a card not given at all are refused in one line."""
from __future__ import annotations

import json

import cv2
import pytest
from click.testing import CliRunner
from support.cameras import card_frame
from support.console import INFECTED_NAME, make_world
from support.pki import make_pki
from support.words import foreign

from scanner.cli.main import main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("trace"))


def trace(world, *args: str):
    return CliRunner().invoke(main, ["server", "trace", "--db", str(world.db), "--keys", str(world.keys_dir),
                                     "--format", "json", "--lang", "en", *args])


def visits(out) -> tuple[str, list[str]]:
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    return doc["card_id"], [v["name"] for v in doc["visits"]]


def test_trace_from_the_cards_text_and_from_a_photo_of_it(world, tmp_path):
    by_id = visits(trace(world, "--card", world.infected_id.upper()))
    assert by_id == (world.infected_id, [INFECTED_NAME, INFECTED_NAME])
    by_text = trace(world, "--card", world.infected_card)
    assert visits(by_text) == by_id
    photo = tmp_path / "the card.jpg"
    cv2.imwrite(str(photo), card_frame(world.infected_card, "perspective", size=(1024, 768), scale=5))
    by_photo = trace(world, "--photo", str(photo))
    assert visits(by_photo) == by_id
    assert "from a photo" in by_photo.stderr and "from the card's text" in by_text.stderr
    vi = CliRunner().invoke(main, ["server", "trace", "--db", str(world.db), "--no-holders", "--lang", "vi",
                                   "--photo", str(photo), "--contacts"])
    assert vi.exit_code == 0 and vi.stdout.count("not_opened") == 9, vi.output
    assert not foreign(vi.stderr, [world.infected_id, "CK1"]), vi.stderr


@pytest.mark.parametrize("case", ["forged", "no_code", "not_an_image", "neither", "both", "garbage"])
def test_a_card_that_names_nobody_is_refused_in_one_line(world, tmp_path, case):
    rogue = make_pki(tmp_path / "rogue").card(name=INFECTED_NAME)
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), card_frame(None))
    (tmp_path / "notes.txt").write_text("not a photo")
    args, said = {
        "forged": (["--card", rogue], "unknown_key"),
        "no_code": (["--photo", str(blank)], "no QR code"),
        "not_an_image": (["--photo", str(tmp_path / "notes.txt")], "cannot be read"),
        "neither": ([], "--card"),
        "both": (["--card", world.infected_id, "--photo", str(blank)], "--photo"),
        "garbage": (["--card", "not-hex"], "neither a card id (hex) nor a card's QR text"),
    }[case]
    out = trace(world, *args)
    assert out.exit_code == 2 and out.stdout == "", out.output
    assert said in out.stderr and len(out.stderr.splitlines()) == 1, out.stderr
