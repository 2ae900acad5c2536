#!/bin/bash
# arm64-check: prove that checkpoint-edge installs and runs on arm64 Debian 12 (bookworm, the base of
# Raspberry Pi OS) and not only on the x86-64 development machine. See docs/raspberry-pi.md.
#
#   make arm64-check                  # or: bash scripts/arm64-check.sh [options]
#
# It builds (or takes from the cache) an arm64 bookworm root with debootstrap, copies the project
# (git archive HEAD) into it, installs it there exactly as README tells a Pi user (`sh setup.sh test`: apt packages,
# venv, pip), and runs the verifier, decoder, entry-log and sync tests and a quick verify bench in
# it, under qemu-user emulation through binfmt_misc. It ends with a summary: which dependencies came
# as aarch64 wheels and which were built, install time, test results, bench figures.
#
# Options:
#   --fresh     rebuild the base root, drop the installed root and empty the apt and pip caches
#               first: everything from scratch, as on a new machine
#   --reinstall install again from the base root even if an installed root for the same
#               setup.py + setup.sh is cached (keeps the base root and the download caches)
#   --worktree  copy the work tree (tracked + untracked, not ignored files) instead of HEAD: for
#               checking changes before they are committed (in a work tree that others are editing
#               at the same time, a run may catch a half-written file)
#   --keep      keep the arm64 root after the run (in $ARM64_CACHE/run/root) to look around in
#   --no-bench  skip the bench
#   --camera-venv  install the way docs/raspberry-pi.md tells a Pi with a camera module: apt's numpy
#               (python3-pywt standing in for python3-picamera2's simplejpeg: both are Cython modules
#               built against Debian's numpy 1.24), a venv made with --system-site-packages, and
#               PIP_CONSTRAINT holding numpy<2; checks that apt's module still imports in the venv
# Environment: ARM64_CACHE (default /var/cache/checkpoint-arm64), ARM64_MIRROR (default: the
# Debian mirror in this machine's apt sources), ARM64_BASE_MAX_AGE_DAYS (default 30),
# ARM64_INSTALLED_MAX_AGE_DAYS (default 7).
#
# Caches (all under ARM64_CACHE, outside the repository): the debootstrapped base root (a tarball,
# rebuilt after 30 days); apt's .deb files and pip's cache, shared by the runs; and the root as it
# was right after a successful install, keyed by setup.py + setup.sh (+ the install mode), the
# two newest kept (~0.5 GB each) and reused for 7 days: a second run with unchanged install files
# copies the current sources over that root's project (keeping .venv) and goes straight to the
# tests. The summary says which.
#
# Needs root (debootstrap, chroot, mounts) on a Debian/Ubuntu host; installs debootstrap,
# qemu-user-static, binfmt-support and zstd with apt when missing. Not part of the regular test run:
# on 2 shared cores a first run takes about 15-25 minutes, a cached one about 8-12 (the tests).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${ARM64_CACHE:-/var/cache/checkpoint-arm64}
MAX_AGE=${ARM64_BASE_MAX_AGE_DAYS:-30}
INSTALLED_MAX_AGE=${ARM64_INSTALLED_MAX_AGE_DAYS:-7}
SUITE=bookworm
VARIANT=minbase   # the smallest Debian: everything else must come from README's install steps
PROJECT_DIR=/srv/checkpoint/checkpoint-edge  # inside the root; ../shared is the test data (read-only)
# The tests to run inside the root: verifier, decoder, entry log, sync. Missing files are skipped
# (listed in the summary), so the list may name tests that other issues have not delivered yet.
TESTS="test_verifier.py test_base45.py test_cbor.py test_cose.py test_bundle.py test_revocation.py
test_fuzz.py test_decode.py test_render.py test_cli.py test_scan.py"
TEST_GLOBS="test_entry*.py test_entrylog*.py test_sealing*.py test_clock*.py test_cli_log*.py test_sync*.py
test_batch*.py test_server*.py"
# and the tests of the parts whose dependencies are platform-specific: evdev (built from source),
# pyserial, lgpio/gpiozero, OpenCV video capture
EXTRA_GLOBS="test_readers*.py test_gpio*.py test_camera*.py test_pipeline*.py"
NICE="nice -n 19"

fresh=0 reinstall=0 source_mode="head" keep=0 bench=1 camera=0
for arg in "$@"; do
    case "$arg" in
        --fresh) fresh=1 ;;
        --reinstall) reinstall=1 ;;
        --head) source_mode="head" ;;
        --worktree) source_mode=worktree ;;
        --keep) keep=1 ;;
        --no-bench) bench=0 ;;
        --camera-venv) camera=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "arm64-check: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'arm64-check: %s\n' "$*" >&2; exit 2; }
now() { date +%s; }
secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot and mounts): sudo make arm64-check"
[ "$(uname -m)" != aarch64 ] || echo "arm64-check: this host is already aarch64; no emulation is involved" >&2

started=$(now)
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock -n 9 || die "another arm64-check is running (lock $CACHE/lock)"

RUN=$CACHE/run
ROOT=$RUN/root
LOGS=$RUN/logs

# --- host tools -----------------------------------------------------------------------------------
need=""
for pkg in debootstrap qemu-user-static binfmt-support zstd; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need="$need $pkg"
done
if [ -n "$need" ]; then
    say "installing host packages:$need"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
fi

# --- binfmt_misc: the kernel runs aarch64 ELF files through qemu, also for every child process ------
# (running only the first binary through qemu-aarch64-static by hand is not enough: dpkg, apt, pip
# and pytest start further programs, which then fail with "Exec format error").
BINFMT=/proc/sys/fs/binfmt_misc
if [ ! -e "$BINFMT/register" ]; then
    mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null ||
        die "cannot mount binfmt_misc at $BINFMT (a container without that right?); without it the arm64 root cannot run: see docs/raspberry-pi.md"
fi
if [ ! -e "$BINFMT/qemu-aarch64" ] || ! grep -q '^enabled' "$BINFMT/qemu-aarch64"; then
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || update-binfmts --import qemu-aarch64 >/dev/null 2>&1 || true
fi
[ -e "$BINFMT/qemu-aarch64" ] && grep -q '^enabled' "$BINFMT/qemu-aarch64" ||
    die "the qemu-aarch64 binfmt_misc handler is not registered (update-binfmts --enable qemu-aarch64 failed)"
interp=$(sed -n 's/^interpreter //p' "$BINFMT/qemu-aarch64")
flags=$(sed -n 's/^flags: //p' "$BINFMT/qemu-aarch64")
binfmt_note="binfmt_misc qemu-aarch64 ($interp, flags $flags)"
qemu_version=$(qemu-aarch64-static --version | head -n1)

# --- mounts and clean-up --------------------------------------------------------------------------
mounts_under() { findmnt -rn -o TARGET | awk -v r="$1/" 'index($0, r) == 1' | sort -r; }
unmount_root() {
    local m
    for m in $(mounts_under "$ROOT"); do umount -R "$m" 2>/dev/null || umount -l "$m" || true; done
    [ -z "$(mounts_under "$ROOT")" ] || die "could not unmount everything under $ROOT; remove it by hand"
}
remove_root() {
    [ -d "$ROOT" ] || return 0
    unmount_root
    rm -rf --one-file-system "$ROOT"
}
finish() {
    if [ -d "$ROOT" ]; then
        unmount_root
        [ "$keep" -eq 1 ] || rm -rf --one-file-system "$ROOT"
    fi
}
trap finish EXIT
trap 'exit 130' INT TERM

# --- base root: debootstrap once, then a zstd tarball keyed by what went into it, reused for
# $MAX_AGE days ------------------------------------------------------------------------------------
mirror=${ARM64_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}' | grep -v security | head -n1 || true)
fi
if [ -z "$mirror" ]; then
    mirror=$(awk '$1 == "deb" && $3 == "'$SUITE'" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}
security=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}' | grep security | head -n1 || true)
security=${security:-http://deb.debian.org/debian-security}

key=$(printf '%s\n' "suite=$SUITE arch=arm64 variant=$VARIANT mirror=$mirror security=$security" | sha256sum | cut -c1-12)
mkdir -p "$CACHE/base" "$CACHE/apt-archives/partial" "$CACHE/pip"
if [ "$fresh" -eq 1 ]; then
    say "--fresh: removing the cached base root, installed roots, apt archives and pip cache"
    rm -rf --one-file-system "$CACHE/base" "$CACHE/installed" "$CACHE/apt-archives" "$CACHE/pip"
    mkdir -p "$CACHE/base" "$CACHE/apt-archives/partial" "$CACHE/pip"
fi
base=$(find "$CACHE/base" -maxdepth 1 -name "$SUITE-arm64-$VARIANT-$key-*.tar.zst" -mtime "-$MAX_AGE" | sort | tail -n1)
base_note="cached"
if [ -z "$base" ]; then
    say "building an arm64 $SUITE root with debootstrap ($VARIANT, $mirror)"
    t=$(now)
    build=$CACHE/base/build
    ROOT_SAVE=$ROOT ROOT=$build
    remove_root
    $NICE debootstrap --arch=arm64 --variant="$VARIANT" "$SUITE" "$build" "$mirror" >"$CACHE/base/debootstrap.log" 2>&1 ||
        { tail -n 20 "$CACHE/base/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/base/debootstrap.log)"; }
    cat >"$build/etc/apt/sources.list" <<EOF
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb $security $SUITE-security main
EOF
    rm -rf "$build"/var/cache/apt/archives/*.deb "$build"/var/lib/apt/lists/*
    unmount_root  # debootstrap's own /proc mount, should one be left
    base=$CACHE/base/$SUITE-arm64-$VARIANT-$key-$(date +%Y%m%d).tar.zst
    tar --numeric-owner -C "$build" -cf - . | $NICE zstd -q -T2 -o "$base.part"
    mv "$base.part" "$base"
    remove_root
    ROOT=$ROOT_SAVE
    find "$CACHE/base" -maxdepth 1 -name "$SUITE-arm64-$VARIANT-*.tar.zst" ! -path "$base" -delete
    base_note="built now in $(secs $(($(now) - t)))"
fi

# --- the root for this run: the installed root when setup.py and setup.sh are unchanged, else base
if [ "$source_mode" = head ]; then
    install_files=$(git -C "$REPO" show HEAD:setup.py HEAD:setup.sh | sha256sum | cut -c1-16)
else
    install_files=$(cat "$REPO/setup.py" "$REPO/setup.sh" | sha256sum | cut -c1-16)
fi
inst_key=$(printf '%s\n' "base=$(basename "$base") camera=$camera files=$install_files" | sha256sum | cut -c1-16)
INSTALLED=$CACHE/installed/$inst_key
mkdir -p "$CACHE/installed"
reused=""
if [ "$reinstall" -eq 0 ] && [ -f "$INSTALLED/root.tar.zst" ] &&
        [ -n "$(find "$INSTALLED/root.tar.zst" -mtime "-$INSTALLED_MAX_AGE")" ]; then
    reused=$(date -r "$INSTALLED/root.tar.zst" '+%Y-%m-%d %H:%M')
fi
remove_root
rm -rf "$LOGS"
mkdir -p "$ROOT" "$LOGS"
if [ -n "$reused" ]; then
    say "unpacking the installed root of $reused (same setup.py + setup.sh) into $ROOT"
    zstd -q -dc "$INSTALLED/root.tar.zst" | tar --numeric-owner -xpf - -C "$ROOT"
else
    say "unpacking $(basename "$base") into $ROOT"
    zstd -q -dc "$base" | tar --numeric-owner -xpf - -C "$ROOT"
fi
rm -f "$ROOT/etc/resolv.conf"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# the interpreter must be reachable inside the root unless the kernel opened it already (flag F)
case "$flags" in *F*) ;; *) mkdir -p "$ROOT$(dirname "$interp")"; cp "$interp" "$ROOT$interp" ;; esac

mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
mount --rbind /dev "$ROOT/dev"
mount --make-rslave "$ROOT/dev"
mkdir -p "$ROOT/var/cache/apt/archives" "$ROOT/root/.cache/pip"
mount --bind "$CACHE/apt-archives" "$ROOT/var/cache/apt/archives"
mount --bind "$CACHE/pip" "$ROOT/root/.cache/pip"
shared="$REPO/../shared"
mkdir -p "$ROOT$PROJECT_DIR" "$ROOT$(dirname "$PROJECT_DIR")/shared"
if [ -d "$shared/testdata" ]; then
    mount --bind -o ro "$shared" "$ROOT$(dirname "$PROJECT_DIR")/shared"
    shared_note="$(cd "$shared" && pwd) (read-only)"
else
    shared_note="absent (tests that need it skip)"
fi

arch=$(chroot "$ROOT" uname -m)
dpkg_arch=$(chroot "$ROOT" dpkg --print-architecture)
[ "$arch" = aarch64 ] && [ "$dpkg_arch" = arm64 ] || die "the root runs as $arch/$dpkg_arch, not aarch64/arm64"

# --- the project (over a reused root: the old sources go, the installed .venv stays) --------------
find "$ROOT$PROJECT_DIR" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf --one-file-system {} +
if [ "$source_mode" = head ]; then
    git -C "$REPO" archive HEAD | tar -xf - -C "$ROOT$PROJECT_DIR"
    source_note="git archive HEAD ($(git -C "$REPO" rev-parse --short HEAD))"
else
    (cd "$REPO" && git ls-files -z -co --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) |
        tar -xf - -C "$ROOT$PROJECT_DIR"
    dirty=$(git -C "$REPO" status --porcelain | wc -l)
    source_note="work tree at $(git -C "$REPO" rev-parse --short HEAD) with $dirty changed/untracked paths"
fi
if [ -n "$reused" ]; then
    # setup.py's content is what was installed (the cache key), but its mtime is now the commit's
    # or the edit's; date it back to the install stamp so that setup.sh's `-nt` check agrees
    stamp=$(ls -tr "$ROOT$PROJECT_DIR"/.venv/.installed* 2>/dev/null | head -n1)
    [ -z "$stamp" ] || touch -r "$stamp" "$ROOT$PROJECT_DIR/setup.py"
fi

# The network, not the project: where this host reaches PyPI through a proxy or a TLS-inspecting
# gateway, pass its proxy variables and the CA bundle its own pip is configured with (a public
# certificate file) into the root; on an ordinary network there is neither and nothing is passed.
net_env=()
for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [ -z "${!var:-}" ] || net_env+=("$var=${!var}")
done
host_cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
net_note="direct"
if [ -n "$host_cert" ] && [ -f "$host_cert" ]; then
    cp "$host_cert" "$ROOT/etc/host-pip-ca.pem"
    net_env+=("PIP_CERT=/etc/host-pip-ca.pem")
    net_note="pip uses this host's CA bundle ($host_cert), as the host's pip does"
fi
[ "${#net_env[@]}" -eq "$([ -n "$host_cert" ] && [ -f "$host_cert" ] && echo 1 || echo 0)" ] || net_note="$net_note; proxy variables passed"

# run CMD in the root, in the project, as root with a clean environment; output timestamped to a log
in_root() {  # in_root LOG TIMEOUT CMD...
    local log=$1 limit=$2 t0=$SECONDS rc
    shift 2
    set +e
    timeout --kill-after=60 "$limit" $NICE chroot "$ROOT" /usr/bin/env -i \
        HOME=/root LANG=C.UTF-8 TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        PIP_LOG=/tmp/pip.log PIP_REPORT=/tmp/pip-report.json ${net_env[@]+"${net_env[@]}"} \
        /bin/sh -c 'cd "$0" && exec "$@"' "$PROJECT_DIR" "$@" 2>&1 |
        while IFS= read -r line; do printf '[%4ds] %s\n' $((SECONDS - t0)) "$line"; done | tee "$log" >&2
    rc=${PIPESTATUS[0]}
    set -e
    return "$rc"
}

# --- install exactly as README says: sh setup.sh test (apt packages, venv, pip) -------------------
# `sh setup.sh test --version` does the whole set-up and then only asks pytest for its version, so
# the install is timed on its own; the tests below run through the same `sh setup.sh test`.
install_rc=0 installed_at=""
if [ "$camera" -eq 0 ]; then
    mode_note="README: sh setup.sh test (plain venv)"
else
    mode_note="docs/raspberry-pi.md camera recipe: venv --system-site-packages, apt python3-numpy + python3-pywt, PIP_CONSTRAINT numpy<2"
fi
if [ -n "$reused" ]; then
    cp "$INSTALLED"/*.log "$INSTALLED"/*.json "$INSTALLED"/install.env "$LOGS/" 2>/dev/null || true
    # shellcheck disable=SC1091
    . "$LOGS/install.env"
    # setup.sh's own check: with its stamp newer than setup.py it must not install anything again
    in_root "$LOGS/install-reused.log" 600 sh setup.sh test --version || install_rc=$?
    ! grep -q 'setup: ' "$LOGS/install-reused.log" || die "setup.sh wanted to install again over the cached root (see $LOGS/install-reused.log); run with --reinstall"
else
t=$(now)
if [ "$camera" -eq 0 ]; then
    say "installing as README tells a Pi user: sh setup.sh test (apt, venv, pip) under emulation"
    in_root "$LOGS/install.log" 3600 sh setup.sh test --version || install_rc=$?
else
    # docs/raspberry-pi.md, "With a camera module". Raspberry Pi's python3-picamera2 and
    # python3-simplejpeg are not in Debian's archive; python3-pywt is the Debian package that fails
    # the same way (a Cython module built against numpy 1.24 raises "numpy.dtype size changed"
    # under numpy 2), so it shows whether the venv keeps apt's numpy-1.x modules working.
    say "installing as docs/raspberry-pi.md tells a Pi with a camera: apt numpy, venv --system-site-packages, numpy<2"
    printf 'numpy<2\n' >"$ROOT/tmp/pi-constraints.txt"
    in_root "$LOGS/install.log" 3600 sh -c '
        echo "setup: installing Debian packages: python3-venv python3-numpy python3-pywt (camera recipe)" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            python3-venv python3-numpy python3-pywt >/dev/null &&
        echo "setup: creating .venv (python3 -m venv --system-site-packages .venv)" >&2 &&
        python3 -m venv --system-site-packages .venv &&
        PIP_CONSTRAINT=/tmp/pi-constraints.txt sh setup.sh test --version &&
        .venv/bin/python -c "import numpy, pywt, cv2; print(\"camera-venv check: numpy\", numpy.__version__, \"from\", numpy.__file__, \"| apt pywt\", pywt.__version__, \"imports | cv2\", cv2.__version__)"
    ' || install_rc=$?
fi
install_s=$(($(now) - t))
cp "$ROOT/tmp/pip.log" "$LOGS/pip.log" 2>/dev/null || true
cp "$ROOT/tmp/pip-report.json" "$LOGS/pip-report.json" 2>/dev/null || true
apt_line=$(sed -n 's/.*setup: installing Debian packages: *//p' "$LOGS/install.log" | paste -sd';' -)
# seconds from the start to "creating .venv" = the apt step (package lists, download, unpack, configure)
apt_s=$(sed -n 's/^\[ *\([0-9]*\)s\] setup: creating .venv.*/\1/p' "$LOGS/install.log" | head -n1)
pip_start=$(sed -n 's/^\[ *\([0-9]*\)s\] setup: pip install.*/\1/p' "$LOGS/install.log" | head -n1)
printf 'install_s=%s\napt_line="%s"\napt_s=%s\npip_start=%s\ninstalled_at="%s"\n' \
    "$install_s" "$apt_line" "$apt_s" "$pip_start" "$(date '+%Y-%m-%d %H:%M')" >"$LOGS/install.env"
if [ "$install_rc" -eq 0 ]; then
    # keep the root as installed (without the mounted file systems and the shared caches)
    say "saving the installed root for the next run ($INSTALLED)"
    rm -rf "$INSTALLED.part"
    mkdir -p "$INSTALLED.part"
    tar --numeric-owner -C "$ROOT" --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* \
        --exclude=./var/cache/apt/archives/* --exclude=./root/.cache/pip/* \
        --exclude=".$(dirname "$PROJECT_DIR")/shared/*" -cf - . | $NICE zstd -q -T2 -o "$INSTALLED.part/root.tar.zst"
    cp "$LOGS"/install.log "$LOGS"/pip.log "$LOGS"/pip-report.json "$LOGS"/install.env "$INSTALLED.part/" 2>/dev/null || true
    rm -rf "$INSTALLED"
    mv "$INSTALLED.part" "$INSTALLED"
    # keep this one and the one before it (~0.5 GB each); drop older ones and any past their age
    find "$CACHE/installed" -mindepth 1 -maxdepth 1 -type d -mtime "+$INSTALLED_MAX_AGE" -exec rm -rf {} +
    find "$CACHE/installed" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn | tail -n +3 |
        cut -d' ' -f2- | while IFS= read -r old; do rm -rf "$old"; done
fi
fi
py_version=$(chroot "$ROOT" python3 --version 2>&1 || true)

# --- tests ---------------------------------------------------------------------------------------
tests="" missing=""
for name in $TESTS; do
    if [ -f "$ROOT$PROJECT_DIR/tests/$name" ]; then tests="$tests tests/$name"; else missing="$missing $name"; fi
done
found_glob=""
for pattern in $TEST_GLOBS; do
    for f in "$ROOT$PROJECT_DIR"/tests/$pattern; do
        [ -f "$f" ] || continue
        rel=tests/$(basename "$f")
        case " $tests " in *" $rel "*) ;; *) tests="$tests $rel"; found_glob=1 ;; esac
    done
done
[ -n "$found_glob" ] || missing="$missing (no entry-log or sync tests yet: $TEST_GLOBS)"
for pattern in $EXTRA_GLOBS; do
    for f in "$ROOT$PROJECT_DIR"/tests/$pattern; do
        [ -f "$f" ] || continue
        rel=tests/$(basename "$f")
        case " $tests " in *" $rel "*) ;; *) tests="$tests $rel" ;; esac
    done
done
test_rc=none tests_s=0
if [ "$install_rc" -eq 0 ]; then
    say "running the tests inside the arm64 root:$tests"
    t=$(now)
    test_rc=0
    in_root "$LOGS/tests.log" 5400 sh setup.sh test -p no:cacheprovider --junitxml=/tmp/junit.xml $tests || test_rc=$?
    tests_s=$(($(now) - t))
    cp "$ROOT/tmp/junit.xml" "$LOGS/junit.xml" 2>/dev/null || true
fi

# --- bench ---------------------------------------------------------------------------------------
bench_rc=none
if [ "$bench" -eq 1 ] && [ "$install_rc" -eq 0 ]; then
    say "python -m bench --quick --only verify inside the arm64 root (EMULATED timing)"
    bench_rc=0
    in_root "$LOGS/bench.log" 1800 .venv/bin/python -m bench --quick --only verify || bench_rc=$?
fi

# --- summary -------------------------------------------------------------------------------------
summary=$RUN/summary.txt
{
    echo "arm64-check summary ($(date '+%Y-%m-%d %H:%M %z'), host $(uname -m), $(nproc) cpus)"
    echo "  root:      Debian $SUITE arm64 ($VARIANT) under $qemu_version via $binfmt_note"
    echo "             base $(basename "$base") ($base_note); $arch / dpkg $dpkg_arch; $py_version"
    echo "  project:   $source_note -> $PROJECT_DIR; shared data: $shared_note"
    echo "  network:   $net_note"
    echo "  mode:      $mode_note"
    grep -h 'camera-venv check:' "$LOGS/install.log" | sed 's/^\[ *[0-9]*s\] /             /' || true
    if [ -n "$reused" ]; then
        echo "  install:   REUSED the root installed at $installed_at (setup.py + setup.sh unchanged since;"
        echo "             --reinstall or --fresh installs again). Figures of that install:"
    fi
    echo "  install:   sh setup.sh test (apt + venv + pip) $( [ "$install_rc" -eq 0 ] && echo OK || echo "FAILED (exit $install_rc)") in $(secs "$install_s") under emulation"
    [ -z "$apt_line" ] || echo "             apt step installed:$apt_line${apt_s:+ (${apt_s}s, up to 'creating .venv')}"
    [ -z "$pip_start" ] || echo "             pip step: $((install_s - pip_start))s (venv + pip started at ${pip_start}s)"
    python3 - "$LOGS/pip-report.json" "$LOGS/pip.log" <<'PY'
import json, re, sys
from pathlib import Path
report, log = Path(sys.argv[1]), Path(sys.argv[2])
if not report.is_file():
    print("  dependencies: no pip report (pip did not run or failed before resolving)")
    sys.exit(0)
text = log.read_text(errors="replace") if log.is_file() else ""
built = set(re.findall(r"Created wheel for ([^:\s]+):", text))
failed = set(re.findall(r"Failed to build ([^\n]+)", text))
failed = {n for line in failed for n in line.split()}
rows = []
for item in json.loads(report.read_text())["install"]:
    meta, info = item["metadata"], item["download_info"]
    name, version = meta["name"], meta["version"]
    if "dir_info" in info:
        rows.append((name, version, "the project itself (pip install -e)"))
        continue
    filename = info["url"].rsplit("/", 1)[-1]
    cached = "cached" if re.search(r"Using cached " + re.escape(filename), text) else "downloaded"
    if filename.endswith(".whl"):
        platform = filename[:-4].split("-")[-1]
        kind = "pure-Python wheel" if platform == "any" else f"binary wheel {platform}"
    else:
        wheel = re.sub(r"[-_.]+", "_", name).lower()
        reused = re.search(r"(?i)(Using cached|Processing)\s+\S*" + re.escape(wheel) + "-" + re.escape(version)
                           + r"-\S+\.whl", text)
        ok = name in built or name.replace("-", "_") in built
        status = ("FAILED to build" if name in failed else "built OK" if ok
                  else "built in an earlier run, reused from pip's wheel cache" if reused
                  else "build status unknown (see pip.log)")
        kind = f"sdist {filename}, built here: {status}"
    rows.append((name, version, f"{kind} ({cached})"))
binary = [r for r in rows if "binary wheel" in r[2]]
sdist = [r for r in rows if r[2].startswith("sdist")]
print(f"  dependencies ({len(rows)} installed by pip: {len(binary)} binary aarch64 wheels, "
      f"{len(sdist)} built from source, the rest pure Python):")
for name, version, kind in sorted(rows, key=lambda r: (not ("binary" in r[2] or "sdist" in r[2]), r[0].lower())):
    print(f"    {name:24} {version:12} {kind}")
PY
    if [ "$test_rc" = none ]; then
        echo "  tests:     not run (install failed)"
    else
        echo "  tests:     $( [ "$test_rc" -eq 0 ] && echo PASSED || echo "FAILED (exit $test_rc)") in $(secs "$tests_s") under emulation: $(grep -E '^\[ *[0-9]+s\] .*(passed|failed|error)' "$LOGS/tests.log" | tail -n1 | sed 's/^\[ *[0-9]*s\] //')"
        python3 - "$LOGS/junit.xml" <<'PY'
import sys, xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path
path = Path(sys.argv[1])
if not path.is_file():
    sys.exit(0)
per = defaultdict(Counter)
for case in ET.parse(path).iter("testcase"):
    module = case.get("classname", "?").split(".")
    name = module[1] if module[0] == "tests" and len(module) > 1 else module[0]
    outcome = "passed"
    for child in case:
        if child.tag in ("failure", "error", "skipped"):
            outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
    per[name][outcome] += 1
for name in sorted(per):
    c = per[name]
    print(f"    {name + '.py':24} " + ", ".join(f"{c[k]} {k}" for k in ("passed", "failed", "error", "skipped") if c[k]))
PY
        [ -z "$missing" ] || echo "             not present, skipped:$missing"
    fi
    if [ "$bench_rc" != none ]; then
        echo "  bench, quick verify (EMULATED by qemu on x86-64: NOT a Raspberry Pi figure; qemu slows"
        echo "  interpreted Python and C crypto by different factors, so even the ratios do not carry over):"
        grep -E '(EdDSA|ES256): (raw|full)' "$LOGS/bench.log" | sed 's/^\[ *[0-9]*s\] /    /'
        [ "$bench_rc" -eq 0 ] || echo "    bench FAILED (exit $bench_rc)"
    fi
    echo "  total:     $(secs $(($(now) - started))); logs in $LOGS"
    [ "$keep" -eq 0 ] || echo "  root kept: $ROOT (chroot $ROOT /bin/bash; mounts are undone)"
} | tee "$summary"

[ "$install_rc" -eq 0 ] && [ "$test_rc" = 0 ] && { [ "$bench_rc" = none ] || [ "$bench_rc" -eq 0 ]; }
