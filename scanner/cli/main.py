"""The `checkpoint` command: thin commands over the library (docs/cli.md is the contract).

Each command (or group) lives in its own module and imports what it needs at its top; this group
loads only the module of the command being run (click's lazily loaded subcommands), so starting
`checkpoint verify` does not load the server, the daemon or the camera stack, and `checkpoint
--help` lists the commands from the table below without loading any of them.
"""
from __future__ import annotations

import click

from scanner import __version__
from scanner.cli.lazy import Lazy, LazyGroup

COMMANDS = {
    "config": Lazy("scanner.cli.config:config_group", "Check the configuration file; print its documentation."),
    "demo": Lazy("scanner.cli.demo:demo",
                 "The whole appliance without hardware: server, simulated camera, virtual lights, sync, summary."),
    "doctor": Lazy("scanner.cli.doctor:doctor_cmd",
                   "Check camera, readers, GPIO, log, disk, clock, trust, server and sync. Exit 1 if any check fails."),
    "image": Lazy("scanner.cli.image:image_group",
                  "The SD-card image's boot steps: apply the card's configuration files, show why not."),
    "issuer": Lazy("scanner.cli.issuer:issuer",
                   "Issuer tools: keys, cards, trust bundles, revocations (for pilots, demo and tests)."),
    "log": Lazy("scanner.cli.log:log_group",
                "The entry log: counts, recent entries, export, retention, chain check (never holder data)."),
    "provision": Lazy("scanner.cli.provision:provision",
                      "Enroll this device, secure its state directory and write its config (safe to run again)."),
    "run": Lazy("scanner.cli.run:run_cmd",
                "Run the appliance: inputs, verifier, entry log, feedback, sync and the local API."),
    "scan": Lazy("scanner.cli.scan:scan",
                 "Scan cards from cameras, files and readers; print one line per verdict until stopped (Ctrl-C)."),
    "scan-image": Lazy("scanner.cli.scan_image:scan_image",
                       "Decode every QR code in image FILES (PNG, JPEG, WebP...). Exit 2 if a file is unreadable."),
    "server": Lazy("scanner.cli.server:server_group",
                   "The reference central server: run it, enrollment tokens, devices, stats, import, bundles."),
    "sync": Lazy("scanner.cli.sync:sync_group",
                 "Upload entries to the central server, trust updates back, offline export."),
    "udev-rules": Lazy("scanner.cli.udev:udev_rules",
                       "Print udev rules giving known USB QR readers a stable name and the service's group."),
    "verify": Lazy("scanner.cli.verify:verify",
                   "Verify decoded QR TEXT (or '-' to read it from stdin). Exit 0 accept, 1 reject, 2 error."),
}


@click.group(cls=LazyGroup, lazy_subcommands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="checkpoint")
def main() -> None:
    """checkpoint-edge: verify signed personal QR cards offline at checkpoints."""


if __name__ == "__main__":  # pragma: no cover
    main()
