"""Hardware behind narrow interfaces: frame sources (cameras), readers (USB/serial), feedback devices.

Each interface has a real implementation and a simulated one for the demo and tests, the way
gpiozero's pin factories work. Cameras and readers arrive with the scan-pipeline issue, LEDs,
buzzer and relay with the gpiozero issue; until then this package holds nothing.
"""
