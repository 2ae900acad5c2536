"""The appliance: the daemon (`checkpoint run`) that wires inputs, verifier, entry log, feedback and
sync together, its typed configuration, the local API and the kiosk and status pages, the doctor,
enrollment and provisioning. Stands on ``hardware``, ``scanner.store`` and the device side of
``sync``; never on ``sync.server``.

daemon.py wires the parts: the verdict lane (lane.py) on the pipeline's worker (pipeline.py), the
supervisor (supervisor.py), the API's and the doctor's view (status.py), the enroller
(enroller.py), and what they share (device.py). The configuration is declared in schema.py,
checked in config.py and read through the generated classes of settings.py."""
