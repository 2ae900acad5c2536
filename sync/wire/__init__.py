"""What both sides of sync share: the wire protocol's constants and request signatures, the signed
batch format, device identities, the HTTP rules of both ends, trust-bundle deltas, the server
credential, the pull signature and enrollment codes. Imported by the device side (``sync``) and by
the central server (``sync.server``); imports neither."""
