"""Benchmarks of the offline verifier and the trust-bundle loader: ``python -m bench [--quick]``.

The machines we measure on are shared and noisy, so every figure is taken together with a *peer*
(the raw ``cryptography`` verify of the same signature, or a plain ``json.loads`` + base64 decode of
the same bundle) in the same run, with interleaved repeats, and reported as the median of the
per-round ratios next to the median absolute time. See docs/benchmarks.md.
"""
