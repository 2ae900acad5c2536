"""Signed, idempotent batches of entries to the central server, and trust-bundle updates back.

Device side (this package): client (HTTP), state (files and the status report), agent (the loop)
and its batch builder process, trustupdate (the installed bundle), credential (the device's copy of
the server's credential), export (USB), pull (the endpoints the server pulls from), provision
(enrollment). ``sync.site``: the gates of one site sharing what they saw, with no server. What
both sides share: ``sync.wire``. The central side: ``sync.server``, which the
device never imports and which imports nothing of the device side. Specification:
docs/sync-protocol.md.
"""
