"""The configuration file: examples pass the check, every problem at once (key, problem, fix, exit
2), the hardware dataclasses built from it, docs/configuration.md generated from the schema."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.config import write_config
from support.paths import ROOT
from support.pki import make_pki

from scanner.appliance import config as cfg
from scanner.appliance import schema
from scanner.appliance import settings as typed
from scanner.appliance.configschema import Problem
from scanner.appliance.provisioning import render_config
from scanner.base import i18n
from scanner.store.admission import Policy

EXAMPLES = sorted((ROOT / "config").glob("*.toml"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The command as an English reader runs it (tests/test_untranslated.py has the Vietnamese)."""
    return subprocess.run([sys.executable, "-m", "scanner", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, check=False, env={**os.environ, "CHECKPOINT_LANG": "en"})


def test_the_three_examples_exist_and_pass_config_check():
    assert [p.name for p in EXAMPLES] == ["gate.toml", "kiosk.toml", "venue.toml"]
    for path in EXAMPLES:
        r = run_cli("config", "check", str(path))
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"{path}: ok" and r.stderr == ""


def test_docs_are_generated_from_the_schema():
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert doc == schema.markdown(), (
        "docs/configuration.md is stale: run `checkpoint config docs > docs/configuration.md`")
    for section in schema.SECTIONS:  # every key is documented
        for key in section.keys:
            assert f"| `{key.name}` |" in doc


def test_the_typed_sections_are_generated_from_the_schema():
    source = (ROOT / "scanner" / "appliance" / "settings.py").read_text(encoding="utf-8")
    assert source == schema.settings_source(), (
        "scanner/appliance/settings.py is stale: "
        "run `python -m scanner.appliance.schema > scanner/appliance/settings.py`")
    r = subprocess.run([sys.executable, "-m", "scanner.appliance.schema"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120, check=False)
    assert r.returncode == 0 and r.stdout == source
    # the generator never imports what it generates (a broken settings.py can always be written again)
    probe = "import sys, scanner.appliance.schema; print('scanner.appliance.settings' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       check=False)
    assert r.stdout.strip() == "False", r.stderr


def test_sections_are_typed_values_and_a_misspelt_name_raises(tmp_path):
    c = cfg.parse(tomllib.loads('[scan]\ncooldown_s = 2\n[[camera]]\ndevice = "0"\n[feedback.relay]\npin = 23\n'))
    assert c.scan.cooldown_s == 2.0 and c.camera[0].device == "0" and c.camera[0].width == 640
    assert c.feedback.relay.pin == 23 and c.feedback.timings.verdict_s == 1.5 and c.feedback.buzzer is None
    assert isinstance(c.scan, typed.ScanSection) and isinstance(c.camera, tuple)
    with pytest.raises(AttributeError):
        c.scan.cooldown  # noqa: B018  (a typo is an error, never a default)
    with pytest.raises(AttributeError):
        c.kiosks  # noqa: B018
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.scan.cooldown_s = 5  # type: ignore[misc]
    for section in schema.SECTIONS:  # every key of the schema is a field of its section's class
        assert {f.name for f in dataclasses.fields(typed.TYPES[section.name])} >= {k.name for k in section.keys}


def test_the_admission_policy_comes_from_the_trust_clock_and_sync_sections():
    c = cfg.parse({"trust": {"max_age_h": 48, "when_stale": "closed"},
                   "clock": {"max_unconfirmed_h": 6, "when_unconfirmed": "open"},
                   "sync": {"backlog_max": 9, "backlog_max_age_h": 2}})
    assert c.admission_policy() == Policy(48 * 3600, "closed", 6 * 3600, "open", 9, 2 * 3600)


def test_every_problem_at_once_one_line_each(tmp_path):
    pki = make_pki(tmp_path / "pki")
    bad = tmp_path / "bad.toml"
    bad.write_text(f"""
[device]
direction = "sideways"
colour = "blue"
[sync]
server = "http://checkpoint.example.vn"
[trust]
files = ["{pki.pub}", "{tmp_path}/missing.pem"]
[api]
listen = "0.0.0.0:8080"
[feedback.green]
pin = 17
[feedback.relay]
pin = "BOARD11"
[[camera]]
device = "0"
width = "wide"
[[hid]]
layout = "us"
[bogus]
x = 1
""", encoding="utf-8")
    r = run_cli("config", "check", str(bad))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    expected_keys = ["bogus", "device.colour", "device.direction", "trust.files", "sync.server",
                     "camera[0].width", "hid[0].device", "feedback.relay.pin", "api.token_file"]
    assert len(lines) == len(expected_keys), r.stderr
    for key in expected_keys:
        hits = [line for line in lines if f": {key}: " in line]
        assert len(hits) == 1, (key, lines)
        assert "; fix: " in hits[0] and hits[0].startswith(f"checkpoint: error: {bad}: ")
    pin_line = next(line for line in lines if "feedback.relay.pin" in line)
    assert "GPIO17" in pin_line and "feedback.green.pin" in pin_line  # both uses named
    assert "missing.pem does not exist" in next(line for line in lines if "trust.files" in line)
    assert "not https" in next(line for line in lines if "sync.server" in line)
    assert "Traceback" not in r.stderr and r.stdout == ""


@pytest.mark.parametrize("text, key, words", [
    ("[api]\nlisten = \"0.0.0.0:8080\"\ntoken = \"0123456789abcdef0123\"\n", None, None),
    ("[api]\nlisten = \"127.0.0.1:99999\"\n", "api.listen", "HOST:PORT"),
    ("[device\n", "(file)", "not valid TOML"),
    ("[feedback.passage]\npin = 25\n", "feedback.passage", "needs a gate relay"),
    ("[feedback.rgb]\nred = 5\ngreen = 6\nblue = 13\n[feedback.green]\npin = 17\n", "feedback.rgb", "both"),
    ("[[stdin]]\n[[stdin]]\nname = \"two\"\n", "stdin[1].path", "standard input"),
    ("[[serial]]\nport = \"/dev/ttyACM0\"\n[[serial]]\nport = \"/dev/ttyACM0\"\n", "serial[1].name", "also used"),
    ("[feedback.buzzer]\npin = 18\ntonal = true\nmid_tone_hz = 100.0\noctaves = 1\n", "feedback",
     "outside the buzzer's range"),
    ("[[camera]]\ndevice = \"0\"\nroi = [0.5, 0.5, 0.9, 0.9]\n", "camera[0].roi", "region of interest"),
    ("[udev]\nextra_readers = [\"12345:1\"]\n", "udev.extra_readers", "vendor:product"),
    ("[sync]\nserver = \"http://127.0.0.1:8443\"\n", None, None),  # plain http only to loopback (tests)
])
def test_single_problems(text, key, words, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    if key is None:
        assert cfg.check_file(path) == []
        return
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path)
    assert any(p.key == key and words in i18n.render(p.problem, "en") for p in err.value.problems), \
        err.value.lines()


def test_unreadable_files(tmp_path):
    assert "does not exist" in cfg.check_file(tmp_path / "none.toml")[0]
    latin = tmp_path / "latin.toml"
    latin.write_bytes("[device]\nname = \"Ch\xf3\"\n".encode("latin-1"))
    assert "UTF-8" in cfg.check_file(latin)[0]
    r = run_cli("config", "check", str(tmp_path / "none.toml"))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1


def test_examples_build_the_hardware_configs():
    kiosk = cfg.load(ROOT / "config" / "kiosk.toml")
    (cam,) = kiosk.cameras()
    assert cam.resolved_backend() == "picamera2" and cam.roi == (0.15, 0.1, 0.7, 0.8) and cam.source_id == "front"
    fb = kiosk.feedback_config()
    assert fb.pins() == {"green LED": 17, "red LED": 27, "amber LED": 22, "buzzer": 18, "staff button": 24}
    assert fb.buzzer.tonal and fb.button.press == "toggle_direction" and fb.button.hold == "acknowledge"
    gate = cfg.load(ROOT / "config" / "gate.toml")
    entry, exit_ = gate.serial_readers()
    assert (entry.direction, exit_.direction) == ("in", "out")
    fb = gate.feedback_config().validate()
    assert fb.relay.active_high is False and fb.relay.fail_safe == "locked" and fb.relay.pulse_s == 1.5
    assert fb.passage.pull_up is True and fb.passage.timeout_s == 10
    assert gate.log.passback_window_s == 300
    venue = cfg.load(ROOT / "config" / "venue.toml")
    (hid,) = venue.hid_readers()
    assert hid.vendor_product == (0x0C2E, 0x0B61)
    assert venue.summary()["inputs"] == ["reader"] and "token" not in str(venue.summary()).replace("api_token", "")


def test_defaults_discovery_and_live_keys(tmp_path):
    dev = tmp_path / "dev"
    (dev / "checkpoint").mkdir(parents=True)
    for name in ("hid-0c2e-0b61", "serial-1eab-1306"):
        (dev / "checkpoint" / name).touch()
    (dev / "video0").touch()
    found = cfg.discover_inputs(dev)
    assert found == {"camera": [{"name": "camera", "device": str(dev / "video0")}],
                     "hid": [{"name": "hid-0c2e-0b61", "device": str(dev / "checkpoint" / "hid-0c2e-0b61")}],
                     "serial": [{"name": "serial-1eab-1306", "port": str(dev / "checkpoint" / "serial-1eab-1306")}]}
    d = cfg.defaults(tmp_path / "state", found)
    assert d.state_dir == tmp_path / "state" and d.db_path == tmp_path / "state" / "entries.db"
    assert len(d.cameras()) == len(d.hid_readers()) == len(d.serial_readers()) == 1
    assert d.api.listen == ("127.0.0.1", 8080) and d.feedback.relay is None
    a = write_config(tmp_path / "a.toml", {"device": {"state_dir": "/tmp/s"}, "scan": {"cooldown_s": 2.0}})
    b = write_config(tmp_path / "b.toml", {"device": {"state_dir": "/tmp/other"}, "scan": {"cooldown_s": 5.0},
                                           "trust": {"when_stale": "closed"}})
    live, restart = cfg.load(a).live_changes(cfg.load(b))
    assert live == ["scan.cooldown_s", "trust.when_stale"] and restart == ["device.state_dir"]


def test_api_token_from_a_file(tmp_path):
    tok = tmp_path / "token"
    tok.write_text("s3cret-token-for-the-lan\n")
    c = cfg.load(write_config(tmp_path / "c.toml", {"api": {"listen": "0.0.0.0:8080", "token_file": str(tok)}}))
    assert c.api_token() == "s3cret-token-for-the-lan"
    assert c.summary()["api_token"] is True and "s3cret" not in str(c.summary())


_scalars = st.one_of(st.booleans(), st.integers(-10, 100_000), st.floats(allow_nan=True), st.text(max_size=12),
                     st.lists(st.integers(0, 30), max_size=5))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([s.name.split(".")[0] for s in schema.SECTIONS] + ["x"]),
                       st.one_of(st.dictionaries(st.sampled_from(["pin", "device", "port", "listen", "state_dir",
                                                                  "cooldown_s", "direction", "token", "green",
                                                                  "files", "name", "zz"]),
                                                 st.one_of(_scalars, st.dictionaries(st.just("pin"), _scalars)),
                                                 max_size=4),
                                 st.lists(st.dictionaries(st.sampled_from(["device", "port", "name", "width"]),
                                                          _scalars, max_size=3), max_size=2),
                                 _scalars),
                       max_size=5))
def test_fuzz_any_document_gives_a_config_or_problems(doc):
    try:
        c = cfg.parse(doc)
    except cfg.ConfigError as exc:
        assert exc.problems and all(isinstance(p, Problem) and p.key and p.problem and p.fix for p in exc.problems)
        return
    c.feedback_config()
    c.summary()


def test_toml_written_by_provisioning_is_valid(tmp_path):
    text = render_config(tmp_path / "st", "https://server.example", {"hid": [{"name": "r", "device": "/dev/x"}]})
    c = cfg.parse(tomllib.loads(text))
    assert c.sync.server == "https://server.example" and c.state_dir == tmp_path / "st"
    assert c.hid == ()  # inputs found at provisioning are listed as comments: found again at each start


def test_config_check_refuses_what_the_device_cannot_use(tmp_path):
    """A state directory that is a file, a camera video that is not there, two unnamed [[stdin]]
    (named after what the daemon calls them, never None) and trust files given as one string (the
    fix says to make it an array): every one a problem with its fix, all at once."""
    lines = tmp_path / "lines.txt"
    lines.write_text("")
    bad = tmp_path / "bad.toml"
    bad.write_text(f'''[device]
state_dir = "/etc/passwd"
checkpoint_id = "gate"
[sync]
enabled = false
[trust]
files = "{tmp_path}/issuer.pem"
[[camera]]
device = "{tmp_path}/no-such-video.avi"
[[stdin]]
path = "{lines}"
[[stdin]]
path = "{lines}"
''')
    r = run_cli("config", "check", str(bad))
    assert r.returncode == 2, r
    got = {line.split(": ")[3]: line for line in r.stderr.splitlines()}  # checkpoint: error: FILE: KEY: ...
    assert "is not a directory" in got["device.state_dir"]
    assert "does not exist" in got["camera[0].device"]
    assert "input name 'stdin' is also used by stdin[0]" in got["stdin[1].name"] and "None" not in r.stderr
    assert f'fix: make it an array: files = ["{tmp_path}/issuer.pem"]' in got["trust.files"]
