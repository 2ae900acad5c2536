"""Hardware behind narrow interfaces: frame sources (cameras) and QR decoding, readers (USB HID,
serial, stdin), and feedback devices (LEDs, buzzer, gate relay, staff button, passage sensor).
Each input keeps the contract of hardware.inputs and yields `Scan` values (scanner.cards.scan); only
``scanner.cards`` and ``scanner.base`` lie below.

Each interface has a real implementation and a simulated one for the demo and tests, the way
gpiozero's pin factories work (docs/readers.md, docs/wiring.md).
"""
