# Shortcuts; setup.sh does the work (apt packages, venv, pip) so a fresh machine needs only sh.
.PHONY: demo test bench install
demo:
	sh setup.sh demo
test:
	sh setup.sh test
bench:
	sh setup.sh bench
# On a Pi, as root: the appliance (software, service user, systemd units, udev rules); see
# docs/provisioning.md. INSTALL_ARGS="--kiosk" adds the kiosk screen.
install:
	sh scripts/install.sh $(INSTALL_ARGS)
# Not part of `make test` (slow, needs root): install and test inside an emulated arm64 Debian 12 root.
.PHONY: arm64-check
arm64-check:
	bash scripts/arm64-check.sh
