"""Gates of one site working together offline: each device shares what it saw with the others on
the LAN, with no central server.

The parts: ``credential`` (the root-signed site credential that makes a device a member),
``message`` (the signed datagram and the events it carries: no holder details, the card only as
a keyed hash per site and day), ``view`` (the shared view: a grow-only merge of per-device logs
keyed by (device, seq), and what admission reads from it), ``transport`` and ``discovery`` (UDP
between peers, found with mDNS/DNS-SD), ``node`` (the thread that ties them to a device). Stands
on ``scanner.store`` and ``sync.wire``; the appliance wires it. Spec: docs/site.md.
"""
