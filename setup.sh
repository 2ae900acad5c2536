#!/bin/sh
# Set up checkpoint-edge on Debian 12 / Raspberry Pi OS (Bookworm) and run one target:
#   sh setup.sh demo    apt packages + venv + pip, then the demo on built-in defaults
#   sh setup.sh test    the same with the test extras, then the whole test suite
#   sh setup.sh bench   the same, then the benchmarks (extra arguments go to `python -m bench`)
# Runs as root, or as a user who may sudo (only for apt-get, and only when a package is missing).
set -eu
cd "$(dirname "$0")"
target=${1:-demo}
[ $# -gt 0 ] && shift

APT_PACKAGES="python3 python3-venv python3-pip libzbar0 gcc python3-dev openssl systemd udev"
# the central server's tests and benchmarks run a private PostgreSQL (tests/support/postgres.py); not on devices
case "$target" in test|bench) APT_PACKAGES="$APT_PACKAGES postgresql" ;; esac
# the failover test and benchmark run a pg_auto_failover formation (bench/autofailover.py): Debian 12's PostgreSQL is 15
case "$target" in test|bench) APT_PACKAGES="$APT_PACKAGES postgresql-15-auto-failover" ;; esac
# the kiosk page's tests and benchmark drive a real headless Chromium (bench/browser.py); a font with Vietnamese
case "$target" in test|bench) APT_PACKAGES="$APT_PACKAGES chromium chromium-driver fonts-dejavu-core" ;; esac
# the site tests and benchmark make network namespaces, veth pairs and a bridge, and cut a gate off with tc
case "$target" in test|bench) APT_PACKAGES="$APT_PACKAGES iproute2" ;; esac
# the fsync benchmark counts the daemon's fsyncs with strace (bench/bench_fsync.py)
case "$target" in bench) APT_PACKAGES="$APT_PACKAGES strace" ;; esac

# progress (apt's and pip's own) for a person at a terminal; quiet in CI and when the output is kept
if [ -t 2 ] && [ -z "${CI:-}" ]; then
    APT_QUIET=""; APT_OUT=/dev/stderr; PIP_QUIET=""
else
    APT_QUIET="-qq"; APT_OUT=/dev/null; PIP_QUIET="-q"
fi

missing=""
for pkg in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    echo "setup: installing Debian packages:$missing" >&2
    $SUDO apt-get update $APT_QUIET >"$APT_OUT"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y $APT_QUIET --no-install-recommends $missing >"$APT_OUT"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    "$PYTHON" -m venv .venv
fi

install() {  # pip install the package (with extras $1, if any) unless done since setup.py changed
    spec="."
    [ -n "$1" ] && spec=".[$1]"
    stamp=".venv/.installed${1:+-$1}"
    if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
        echo "setup: pip install -e $spec" >&2
        # `|| exit 1`: inside a function called with &&, set -e is off; never stamp a failed install
        .venv/bin/python -m pip install $PIP_QUIET --disable-pip-version-check -e "$spec" >&2 || exit 1
        touch "$stamp"
    fi
}

case "$target" in
    demo)  install "" && exec .venv/bin/checkpoint demo "$@" ;;
    test)  install dev && exec .venv/bin/python -m pytest "$@" ;;
    bench) install dev && exec .venv/bin/python -m bench "$@" ;;
    *) echo "usage: sh setup.sh demo|test|bench" >&2; exit 2 ;;
esac
