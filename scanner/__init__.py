"""checkpoint-edge: offline verification of signed personal QR cards at checkpoints.

The scan pipeline reads left to right: frame or reader line → decoded text → verdict → entry →
batch → server. This package holds the card formats, trust store, verifier and decoding.
"""
__version__ = "0.2.0"
