"""Signed, idempotent batches of entries to the central server, and trust-bundle updates back.

The protocol (docs/sync-protocol.md) and its implementation arrive with the sync issue; until
then this package holds nothing.
"""
