#!/bin/sh
# Install checkpoint-edge as an appliance on Raspberry Pi OS / Debian 12 (docs/provisioning.md):
#   sudo sh scripts/install.sh [--kiosk] [--prefix DIR] [--config FILE]
# puts the software in PREFIX (/opt/checkpoint-edge) with its own venv, the service user and its
# directories (sysusers.d, tmpfiles.d), the systemd units, the udev rules for USB QR readers,
# and enables checkpoint.service (and with --kiosk the kiosk screen). Safe to run again.
# For packaging and tests: --destdir DIR stages everything under DIR and touches nothing else;
# --no-apt, --no-venv and --no-start skip those steps.
set -eu

PREFIX=/opt/checkpoint-edge
DESTDIR=""
KIOSK=0
APT=1
VENV=1
START=1
CONFIG=""
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=$2; shift ;;
        --destdir) DESTDIR=$2; shift ;;
        --config) CONFIG=$2; shift ;;
        --kiosk) KIOSK=1 ;;
        --no-apt) APT=0 ;;
        --no-venv) VENV=0 ;;
        --no-start) START=0 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

SRC=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "$DESTDIR" ]; then
    mkdir -p "$DESTDIR"
    DESTDIR=$(cd "$DESTDIR" && pwd)
    APT=0; START=0  # staging: nothing on this machine changes
elif [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo sh scripts/install.sh)" >&2
    exit 2
fi
say() { echo "install: $*" >&2; }
D() { printf '%s%s' "$DESTDIR" "$1"; }

# 1. Debian packages: what setup.sh lists, picamera2 (Pi camera modules) where the archive has it,
#    and the kiosk's compositor and browser
if [ "$APT" -eq 1 ]; then
    pkgs=$(sed -n 's/^APT_PACKAGES="\(.*\)"$/\1/p' "$SRC/setup.sh")
    if apt-cache show python3-picamera2 >/dev/null 2>&1; then pkgs="$pkgs python3-picamera2"; fi
    if [ "$KIOSK" -eq 1 ]; then pkgs="$pkgs cage chromium"; fi
    say "apt packages: $pkgs"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
fi

# 2. the software, in PREFIX with its own venv (system site packages: picamera2 comes from apt)
mkdir -p "$(D "$PREFIX")"
if [ "$(cd "$(D "$PREFIX")" && pwd)" != "$SRC" ]; then
    say "copying $SRC to $(D "$PREFIX")"
    (cd "$SRC" && tar --exclude=./.venv --exclude=./.git --exclude='*.egg-info' --exclude=__pycache__ \
        --exclude=./bench/out -cf - .) | (cd "$(D "$PREFIX")" && tar -xf -)
fi
if [ "$VENV" -eq 1 ]; then
    if [ ! -x "$(D "$PREFIX")/.venv/bin/python" ]; then
        python3 -m venv --system-site-packages "$(D "$PREFIX")/.venv"
    fi
    say "pip install $(D "$PREFIX")"
    if dpkg-query -W -f='${Status}' python3-picamera2 2>/dev/null | grep -q "ok installed"; then
        # keep NumPy 1.x: picamera2's compiled parts from apt break under NumPy 2
        PIP_CONSTRAINT="$SRC/scripts/picamera-constraints.txt"
        export PIP_CONSTRAINT
    fi
    "$(D "$PREFIX")/.venv/bin/python" -m pip install -q --disable-pip-version-check "$(D "$PREFIX")"
fi
mkdir -p "$(D /usr/local/bin)"
ln -sf "$PREFIX/.venv/bin/checkpoint" "$(D /usr/local/bin/checkpoint)"

# 3. the service user and its directories
install -D -m 0644 "$SRC/systemd/checkpoint.sysusers" "$(D /usr/lib/sysusers.d/checkpoint.conf)"
install -D -m 0644 "$SRC/systemd/checkpoint.tmpfiles" "$(D /usr/lib/tmpfiles.d/checkpoint.conf)"
if [ -n "$DESTDIR" ]; then
    mkdir -p "$(D /etc)"
    systemd-sysusers --root="$DESTDIR" "$(D /usr/lib/sysusers.d/checkpoint.conf)"
    systemd-tmpfiles --root="$DESTDIR" --create "$(D /usr/lib/tmpfiles.d/checkpoint.conf)"
else
    systemd-sysusers /usr/lib/sysusers.d/checkpoint.conf
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/checkpoint.conf
fi

# 4. the units (with this PREFIX) and the udev rules
mkdir -p "$(D /etc/systemd/system)"
for unit in checkpoint.service checkpoint-kiosk.service; do
    sed "s#/opt/checkpoint-edge#$PREFIX#g" "$SRC/systemd/$unit" > "$(D /etc/systemd/system)/.$unit.tmp"
    chmod 0644 "$(D /etc/systemd/system)/.$unit.tmp"
    mv "$(D /etc/systemd/system)/.$unit.tmp" "$(D /etc/systemd/system)/$unit"
done
mkdir -p "$(D /etc/udev/rules.d)"
if [ -n "$CONFIG" ] && [ "$VENV" -eq 1 ]; then
    "$(D "$PREFIX")/.venv/bin/checkpoint" udev-rules --config "$CONFIG" > "$(D /etc/udev/rules.d)/70-checkpoint-readers.rules"
else
    install -m 0644 "$SRC/udev/70-checkpoint-readers.rules" "$(D /etc/udev/rules.d)/70-checkpoint-readers.rules"
fi

# 5. the configuration: an example to start from (the daemon runs without one, waiting for an
#    enrollment QR and finding readers by itself)
mkdir -p "$(D /etc/checkpoint)"
if [ -n "$CONFIG" ]; then
    install -m 0644 "$CONFIG" "$(D /etc/checkpoint/checkpoint.toml)"
fi

if [ "$START" -eq 1 ]; then
    udevadm control --reload && udevadm trigger --action=add --subsystem-match=input --subsystem-match=tty || true
    systemctl daemon-reload
    systemctl enable checkpoint.service
    systemctl restart checkpoint.service
    if [ "$KIOSK" -eq 1 ]; then
        systemctl enable checkpoint-kiosk.service
        systemctl restart checkpoint-kiosk.service
    fi
fi

say "done. Next (docs/provisioning.md):"
say "  cp $PREFIX/config/venue.toml /etc/checkpoint/checkpoint.toml   # or kiosk.toml / gate.toml; then edit"
say "  checkpoint config check /etc/checkpoint/checkpoint.toml"
say "  sudo -u checkpoint checkpoint provision --server URL --token T --state-dir /var/lib/checkpoint"
say "     (or show the device an enrollment QR: checkpoint server enroll-qr on the server)"
say "  systemctl restart checkpoint && checkpoint doctor"
