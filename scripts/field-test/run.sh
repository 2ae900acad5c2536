#!/bin/bash
# make field-test: the host's tools, the image (make image; cached), the project's venv, then the
# scenarios (scripts/field-test/fieldtest.py; its options pass through: --smoke, --cuts N,
# --machine virt, --seed N, --image PATH). Needs root. docs/raspberry-pi.md#field-test.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PROG=field-test
# shellcheck source=scripts/image/lib.sh
. "$REPO/scripts/image/lib.sh"
[ "$(id -u)" -eq 0 ] || die "needs root (debugfs on a copy of the image, QEMU): sudo make field-test"
host_packages qemu-system-arm device-tree-compiler mtools dosfstools e2fsprogs fdisk
image_args=()
for arg in "$@"; do [ "$arg" != --worktree ] || image_args+=(--worktree); done
bash "$REPO/scripts/image/build.sh" "${image_args[@]}" >/dev/null
# the host side imports the project (keys, cards, the reference server): the venv of setup.sh
(cd "$REPO" && sh setup.sh test --version >/dev/null)
args=()
for arg in "$@"; do [ "$arg" = --worktree ] || args+=("$arg"); done
cd "$REPO"
exec .venv/bin/python scripts/field-test/fieldtest.py "${args[@]}"
