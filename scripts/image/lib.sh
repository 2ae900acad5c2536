# Shared by scripts/image/build.sh and scripts/field-test: host packages, binfmt_misc, the cache.
# Sourced (POSIX sh), never run.

IMAGE_CACHE=${IMAGE_CACHE:-/var/cache/checkpoint-image}

say() { printf '\n== %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "${PROG:-image}" "$*" >&2; exit 2; }
now() { date +%s; }
secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# host_packages PKG...: install the Debian packages that are missing (apt, as root)
host_packages() {
    missing=""
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
    done
    [ -n "$missing" ] || return 0
    say "installing host packages:$missing"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# the kernel runs every aarch64 program through qemu (also those dpkg and pip start in the chroot)
binfmt_aarch64() {
    binfmt=/proc/sys/fs/binfmt_misc
    if [ ! -e "$binfmt/register" ]; then
        mount -t binfmt_misc binfmt_misc "$binfmt" 2>/dev/null ||
            die "cannot mount binfmt_misc at $binfmt (a container without that right?)"
    fi
    if [ ! -e "$binfmt/qemu-aarch64" ] || ! grep -q '^enabled' "$binfmt/qemu-aarch64"; then
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || update-binfmts --import qemu-aarch64 >/dev/null 2>&1 || true
    fi
    [ -e "$binfmt/qemu-aarch64" ] && grep -q '^enabled' "$binfmt/qemu-aarch64" ||
        die "the qemu-aarch64 binfmt_misc handler is not registered (update-binfmts --enable qemu-aarch64 failed)"
}

# the Debian mirror this host's apt uses (deb822 or one-line sources), and its security mirror
debian_mirror() {
    m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}' | grep -v security | head -n1 || true)
    [ -n "$m" ] || m=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    echo "${m:-http://deb.debian.org/debian}"
}
debian_security_mirror() {
    m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}' | grep security | head -n1 || true)
    echo "${m:-http://deb.debian.org/debian-security}"
}

# mounts below a directory, deepest first
mounts_under() { findmnt -rn -o TARGET | awk -v r="$1/" 'index($0, r) == 1' | sort -r; }
unmount_all_under() {
    for m in $(mounts_under "$1"); do umount "$m" 2>/dev/null || umount -l "$m" || true; done
    [ -z "$(mounts_under "$1")" ] || die "could not unmount everything under $1; remove it by hand"
}
