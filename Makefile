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
# The SD-card image for a Raspberry Pi (Debian 12 arm64, the appliance installed by scripts/install.sh),
# cached under /var/cache/checkpoint-image; root. IMAGE_ARGS: --xz, --kiosk, --worktree, --rebuild.
# docs/raspberry-pi.md#the-sd-card-image
.PHONY: image
image:
	bash scripts/image/build.sh $(IMAGE_ARGS)
# Boot that image in qemu-system-aarch64 (-M raspi3b) and test the appliance as a whole machine (root;
# hours on 2 shared cores with 10 power cuts, ~80 min on -M virt; the smoke version: boot, one card on
# the USB keyboard, one power cut, 15-23+ min, plus ~11 min to build the image). Not in CI (too slow).
# FIELD_TEST_ARGS: --cuts N, --cuts-only, --config-only, --machine virt, --seed N, --worktree.
# docs/raspberry-pi.md#field-test
.PHONY: field-test field-test-smoke
field-test:
	bash scripts/field-test/run.sh $(FIELD_TEST_ARGS)
field-test-smoke:
	bash scripts/field-test/run.sh --smoke $(FIELD_TEST_ARGS)
