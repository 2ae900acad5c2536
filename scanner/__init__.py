"""checkpoint-edge: offline verification and logging of signed personal QR cards at checkpoints.

The data flows left to right: frame or reader line → decoded text → verdict → admission → entry →
batch → server. The packages stand on floors, each importing only those below it
(docs/architecture.md):

- ``scanner.base``: reason codes and typed errors, the translation catalogue, safe text, files;
- ``scanner.cards``: the pure card core (formats, COSE, trust, bundles, the verifier);
- ``hardware`` (frame sources, decoding, readers, feedback) and ``scanner.store`` (the entry log);
- ``sync`` (the device side of sync; ``sync.wire``: what both sides share) and ``sync.server``;
- ``scanner.appliance``: the daemon that ties the parts together;
- ``scanner.cli`` and ``scanner.demo`` on top.
"""
__version__ = "0.2.0"
