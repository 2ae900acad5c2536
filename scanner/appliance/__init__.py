"""The appliance: the daemon (`checkpoint run`) that wires inputs, verifier, entry log, feedback and
sync together, its typed configuration, the local API and the kiosk and status pages, the doctor,
enrollment and provisioning. Stands on ``hardware``, ``scanner.store`` and the device side of
``sync``; never on ``sync.server``."""
