"""The pure card core: CBOR, base45, COSE, keys, X.509 and JWKS, the card formats (CK1, EU DCC,
SMART Health Cards), trust stores and root-signed bundles with revocations, verdicts and the
offline verifier, and the `Scan` a card's text travels in from any input; issuing and drawing
cards for tests, pilots and the demo. No I/O but reading key files; imports only ``scanner.base``."""
