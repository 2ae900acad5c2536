"""Signed, idempotent batches of entries to the central server, and trust-bundle updates back.

Device side: client (HTTP), state (files), agent (the loop) and its batch builder process,
trustupdate (bundles and deltas), credential (the server the root vouches for), export (USB),
pull (the server pulls), provision (enrollment). What both sides share: ``sync.wire``. The central
side: ``sync.server``, which the device never imports. Specification: docs/sync-protocol.md.
"""
