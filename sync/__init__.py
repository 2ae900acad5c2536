"""Signed, idempotent batches of entries to the central server, and trust-bundle updates back.

Device side: identity (key), batch (signed batch format), protocol, client (HTTP), state (files),
agent (the loop), trustupdate (bundles and deltas), export (USB), provision (enrollment).
Server side: sync/server/. Specification: docs/sync-protocol.md.
"""
