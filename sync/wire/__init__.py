"""What both sides of sync share: the wire protocol's constants and errors, the signed batch
format, and device identities. Imported by the device side (``sync``) and by the central server
(``sync.server``); imports neither."""
