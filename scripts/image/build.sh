#!/bin/bash
# make image: a flashable Raspberry Pi SD-card image (arm64, Debian 12 bookworm) with the appliance
# installed by scripts/install.sh, exactly as a person installs it on a Pi. docs/raspberry-pi.md.
#
#   sudo make image                    # or: sudo bash scripts/image/build.sh [options]
#
# How: debootstrap an arm64 bookworm root (qemu-user through binfmt_misc runs its programs), add
# Debian's kernel (linux-image-arm64) and raspi-firmware (the Pi boot firmware, config.txt,
# cmdline.txt, the device trees), run scripts/install.sh in it, add the image's own files (image/
# rootfs: read-only root, the CKDATA partition, first-boot units), then make the file systems
# without mounting anything (mkfs.vfat + mtools, mkfs.ext4 -d) and put them in an MBR table
# (sfdisk): RASPIFIRM (FAT, boot), RASPIROOT (ext4, read-only root), CKDATA (ext4, state).
#
# Options:
#   --worktree  install the work tree (tracked + untracked, not ignored files) instead of HEAD
#   --kiosk     install with --kiosk (cage and Chromium for the kiosk screen; ~0.5 GB more)
#   --xz        also write IMAGE.img.xz (what Raspberry Pi Imager and dd users download)
#   --rebuild   build again even if the cache holds an image for the same inputs
#   --rebase    also debootstrap the base root again
# Environment: IMAGE_CACHE (default /var/cache/checkpoint-image), IMAGE_MIRROR (default: the host's
# Debian mirror).
#
# Cache (outside the repository, under IMAGE_CACHE): the base root (debootstrap, kernel, firmware,
# the Debian packages of setup.sh) as a tarball keyed by those package lists and image/base; pip's
# and apt's download caches; the images, keyed by the base, the project's files and the options
# (the two newest are kept). A second `make image` with the same inputs only prints where it is.
# Prints the image's path last; IMAGE_CACHE/latest.json describes it (read by the field test).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
PROG=image
# shellcheck source=scripts/image/lib.sh
. "$REPO/scripts/image/lib.sh"

SUITE=bookworm
NICE="nice -n 10"
SRC_IN_ROOT=/root/checkpoint-edge-src
# the base system: systemd as init, udev, the kernel's tools, time and network, and what the image's
# own units use (sfdisk, partx, resize2fs, findmnt, lsblk); raspi-firmware is in non-free-firmware
BASE_PACKAGES="systemd-sysv udev kmod initramfs-tools zstd e2fsprogs dosfstools fdisk util-linux
ca-certificates systemd-timesyncd iproute2 iputils-ping netbase"
KERNEL_PACKAGES="linux-image-arm64 raspi-firmware"
FAT_MB=256
DATA_MB=256

worktree=0 kiosk=0 xz=0 rebuild=0 rebase=0
for arg in "$@"; do
    case "$arg" in
        --worktree) worktree=1 ;;
        --kiosk) kiosk=1 ;;
        --xz) xz=1 ;;
        --rebuild) rebuild=1 ;;
        --rebase) rebase=1; rebuild=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) die "unknown option $arg (see --help)" ;;
    esac
done
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot): sudo make image"

started=$(now)
host_packages debootstrap qemu-user-static binfmt-support zstd dosfstools mtools fdisk e2fsprogs xz-utils
binfmt_aarch64
mkdir -p "$IMAGE_CACHE"
exec 9>"$IMAGE_CACHE/build.lock"
flock -n 9 || die "another image build is running (lock $IMAGE_CACHE/build.lock)"

mirror=${IMAGE_MIRROR:-$(debian_mirror)}
security=$(debian_security_mirror)
APT_PACKAGES=$(sed -n 's/^APT_PACKAGES="\(.*\)"$/\1/p' "$REPO/setup.sh")
[ -n "$APT_PACKAGES" ] || die "no APT_PACKAGES line in setup.sh"

WORK=$IMAGE_CACHE/work
ROOT=$WORK/root
LOGS=$WORK/logs
finish() { if [ -d "$ROOT" ]; then unmount_all_under "$ROOT"; fi; }
trap finish EXIT
trap 'exit 130' INT TERM

# --- the inputs and their keys ---------------------------------------------------------------------
sha() { sha256sum | cut -c1-16; }
base_key=$( { echo "suite=$SUITE mirror=$mirror security=$security"; echo "$BASE_PACKAGES $KERNEL_PACKAGES";
              echo "$APT_PACKAGES"; (cd "$REPO/image/base" && find . -type f | LC_ALL=C sort | xargs cat); } | sha)
if [ "$worktree" -eq 1 ]; then
    tree=$(cd "$REPO" && git ls-files -z -co --exclude-standard | LC_ALL=C sort -z |
           xargs -0 sha256sum 2>/dev/null | sha)
    source_note="work tree at $(git -C "$REPO" rev-parse --short HEAD) with $(git -C "$REPO" status --porcelain | wc -l) changed/untracked paths"
else
    tree=$(git -C "$REPO" rev-parse 'HEAD^{tree}')
    source_note="git archive HEAD ($(git -C "$REPO" rev-parse --short HEAD))"
fi
image_key=$(echo "base=$base_key tree=$tree kiosk=$kiosk" | sha)
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/scanner/__init__.py")
name=checkpoint-edge-${version:-dev}-rpi-arm64-$image_key
OUT=$IMAGE_CACHE/images/$name
mkdir -p "$IMAGE_CACHE/images" "$IMAGE_CACHE/base" "$IMAGE_CACHE/apt-archives/partial" "$IMAGE_CACHE/pip"

if [ "$rebuild" -eq 0 ] && [ -f "$OUT/$name.img" ] && [ -f "$OUT/build.json" ]; then
    [ "$xz" -eq 0 ] || [ -f "$OUT/$name.img.xz" ] || $NICE xz -T2 -6 -k "$OUT/$name.img"
    cp "$OUT/build.json" "$IMAGE_CACHE/latest.json"
    say "cached: the image for these inputs exists (key $image_key; --rebuild builds it again)"
    echo "$OUT/$name.img"
    exit 0
fi

rm -rf "$LOGS"
mkdir -p "$LOGS"
# run a command in the root with a clean environment (SYSTEMD_OFFLINE: systemctl enables units but
# starts nothing, as in any chroot); its output timestamped into a log
in_root() {  # in_root LOG CMD...
    local log=$1 t0=$SECONDS rc
    shift
    set +e
    $NICE chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive SYSTEMD_OFFLINE=1 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin ${net_env[@]+"${net_env[@]}"} "$@" 2>&1 |
        while IFS= read -r line; do printf '[%4ds] %s\n' $((SECONDS - t0)) "$line"; done >>"$log"
    rc=${PIPESTATUS[0]}
    set -e
    [ "$rc" -eq 0 ] || { tail -n 25 "$log" >&2; die "failed in the root: $* (exit $rc; log $log)"; }
}
mount_root() {
    mount -t proc proc "$ROOT/proc"
    mount -t sysfs sysfs "$ROOT/sys"
    mount --rbind /dev "$ROOT/dev"
    mount --make-rslave "$ROOT/dev"
    mkdir -p "$ROOT/var/cache/apt/archives" "$ROOT/root/.cache/pip"
    mount --bind "$IMAGE_CACHE/apt-archives" "$ROOT/var/cache/apt/archives"
    mount --bind "$IMAGE_CACHE/pip" "$ROOT/root/.cache/pip"
    rm -f "$ROOT/etc/resolv.conf"
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
}
# the network, not the project: this host's proxy variables and pip CA bundle, if it has any
net_env=()
for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [ -z "${!var:-}" ] || net_env+=("$var=${!var}")
done
host_cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}

# --- 1. the base root: debootstrap, kernel, firmware, setup.sh's packages (cached) ------------------
base=$IMAGE_CACHE/base/$SUITE-arm64-$base_key.tar.zst
base_note="cached ($(basename "$base"))"
if [ "$rebase" -eq 1 ] || [ ! -f "$base" ]; then
    say "building the base root: debootstrap $SUITE arm64 from $mirror"
    t=$(now)
    [ -d "$ROOT" ] && unmount_all_under "$ROOT"
    rm -rf --one-file-system "$ROOT"
    # shellcheck disable=SC2086
    $NICE debootstrap --arch=arm64 --variant=minbase --components=main,non-free-firmware \
        --include="$(echo $BASE_PACKAGES $APT_PACKAGES | tr ' ' ',')" \
        "$SUITE" "$ROOT" "$mirror" >"$LOGS/debootstrap.log" 2>&1 ||
        { tail -n 20 "$LOGS/debootstrap.log" >&2; die "debootstrap failed (log $LOGS/debootstrap.log)"; }
    cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $mirror $SUITE main non-free-firmware
deb $mirror $SUITE-updates main non-free-firmware
deb $security $SUITE-security main non-free-firmware
EOF
    cp -a "$REPO/image/base/." "$ROOT/"
    mount_root
    say "installing the kernel and the Pi firmware (one initramfs, made once)"
    # INITRD=No: the kernel's own hook makes no initramfs; update-initramfs below makes the one
    in_root "$LOGS/kernel.log" sh -c "apt-get update -qq && apt-get upgrade -y -q && INITRD=No apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold $KERNEL_PACKAGES"
    in_root "$LOGS/kernel.log" update-initramfs -c -k all
    ls "$ROOT"/boot/firmware/vmlinuz-* "$ROOT"/boot/firmware/initrd.img-* >/dev/null 2>&1 ||
        die "raspi-firmware did not put the kernel and initramfs into /boot/firmware (log $LOGS/kernel.log)"
    rm -rf "$ROOT"/var/lib/apt/lists/*
    unmount_all_under "$ROOT"
    tar --numeric-owner -C "$ROOT" -cf - . | $NICE zstd -q -T2 -o "$base.part"
    mv "$base.part" "$base"
    find "$IMAGE_CACHE/base" -maxdepth 1 -name "$SUITE-arm64-*.tar.zst" ! -path "$base" -delete
    base_note="built now in $(secs $(($(now) - t)))"
else
    say "unpacking the base root ($(basename "$base"))"
    [ -d "$ROOT" ] && unmount_all_under "$ROOT"
    rm -rf --one-file-system "$ROOT"
    mkdir -p "$ROOT"
    zstd -q -dc "$base" | tar --numeric-owner -xpf - -C "$ROOT"
fi
kernel_version=$(basename "$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -n1)" | sed 's/^vmlinuz-//')

# --- 2. the appliance, installed by scripts/install.sh as a person would ----------------------------
mount_root
if [ -n "$host_cert" ] && [ -f "$host_cert" ]; then
    cp "$host_cert" "$ROOT/etc/host-pip-ca.pem"
    net_env+=("PIP_CERT=/etc/host-pip-ca.pem")
fi
mkdir -p "$ROOT$SRC_IN_ROOT"
if [ "$worktree" -eq 1 ]; then
    (cd "$REPO" && git ls-files -z -co --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) |
        tar -xf - -C "$ROOT$SRC_IN_ROOT"
else
    git -C "$REPO" archive HEAD | tar -xf - -C "$ROOT$SRC_IN_ROOT"
fi
say "sh scripts/install.sh$([ "$kiosk" -eq 1 ] && echo ' --kiosk') in the root (apt, venv, pip, user, units, udev rules)"
t=$(now)
install_args=""
[ "$kiosk" -eq 0 ] || install_args="--kiosk"
# shellcheck disable=SC2086
in_root "$LOGS/install.log" sh "$SRC_IN_ROOT/scripts/install.sh" $install_args
install_s=$(($(now) - t))
rm -rf --one-file-system "${ROOT:?}$SRC_IN_ROOT" "$ROOT/etc/host-pip-ca.pem"

say "adding the image's files (image/rootfs) and enabling its units"
cp -a "$REPO/image/rootfs/." "$ROOT/"
in_root "$LOGS/image.log" apt-get update -qq
# D-Bus for logind and the other systemd services that talk over it; systemd-resolved last: it turns
# /etc/resolv.conf into its symlink, which the chroot cannot use
in_root "$LOGS/image.log" apt-get install -y -q --no-install-recommends dbus
in_root "$LOGS/image.log" apt-get install -y -q --no-install-recommends systemd-resolved
in_root "$LOGS/image.log" systemctl enable systemd-networkd.service systemd-resolved.service \
    systemd-timesyncd.service checkpoint-growdata.service checkpoint-firstboot.service checkpoint.service
# a read-only root: no first-boot questions, a transient machine id (a new one at every boot)
in_root "$LOGS/image.log" systemctl mask systemd-firstboot.service
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
mkdir -p "$ROOT/data" "$ROOT/etc/checkpoint" "$ROOT/var/lib/checkpoint" "$ROOT/var/lib/systemd/timesync"
# systemd-logind's StateDirectory: systemd cannot make it at boot on the read-only root
mkdir -p "$ROOT/var/lib/systemd/linger"
# the versions inside, for the build record
py_version=$(chroot "$ROOT" /opt/checkpoint-edge/.venv/bin/python --version 2>&1)
unmount_all_under "$ROOT"  # first: the apt and pip caches are the host's, bind-mounted
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/root/.cache "$ROOT"/tmp/* "$ROOT"/var/tmp/* \
    "$ROOT"/var/log/*.log "$ROOT"/var/cache/debconf/*-old "$ROOT"/var/lib/dpkg/*-old

# --- 3. the file systems and the image (nothing is mounted: mkfs -d, mtools, sfdisk) ---------------
say "making the file systems and the partition table"
t=$(now)
STAGE=$WORK/stage
rm -rf "$STAGE"
mkdir -p "$STAGE/data/etc-checkpoint" "$STAGE/data/checkpoint" "$STAGE/data/timesync"
chmod 0700 "$STAGE/data/checkpoint"
# the boot partition: what raspi-firmware put in /boot/firmware, and the provisioning notes
mkfs.vfat -F 32 -n RASPIFIRM -C "$STAGE/boot.img" $((FAT_MB * 1024)) >/dev/null
mcopy -s -i "$STAGE/boot.img" "$ROOT"/boot/firmware/* ::/
mcopy -i "$STAGE/boot.img" "$REPO/image/boot/README-checkpoint.txt" ::/README-checkpoint.txt
find "$ROOT/boot/firmware" -mindepth 1 -delete
# the root: the tree as it is, 15 % + 64 MiB free (read-only: nothing grows there at run time), and
# inodes for its files (a venv has many small ones) with 30 % to spare
root_mb=$(du -s -B1M "$ROOT" | cut -f1)
root_mb=$((root_mb * 115 / 100 + 64))
inodes=$(($(find "$ROOT" -xdev | wc -l) * 13 / 10 + 4096))
mkfs.ext4 -q -F -L RASPIROOT -m 0 -N "$inodes" -d "$ROOT" "$STAGE/root.img" "${root_mb}M"
mkfs.ext4 -q -F -L CKDATA -m 0 -d "$STAGE/data" "$STAGE/data.img" "${DATA_MB}M"
# MBR (the Pi 3's boot ROM reads no GPT): 4 MiB gap, boot, root, data
total_mb=$((4 + FAT_MB + root_mb + DATA_MB))
img=$WORK/$name.img
rm -f "$img"
truncate -s "${total_mb}M" "$img"
sfdisk -q "$img" <<EOF
label: dos
start=$((4 * 2048)), size=$((FAT_MB * 2048)), type=c
start=$(((4 + FAT_MB) * 2048)), size=$((root_mb * 2048)), type=83
start=$(((4 + FAT_MB + root_mb) * 2048)), size=$((DATA_MB * 2048)), type=83
EOF
dd if="$STAGE/boot.img" of="$img" bs=1M seek=4 conv=notrunc,sparse status=none
dd if="$STAGE/root.img" of="$img" bs=1M seek=$((4 + FAT_MB)) conv=notrunc,sparse status=none
dd if="$STAGE/data.img" of="$img" bs=1M seek=$((4 + FAT_MB + root_mb)) conv=notrunc,sparse status=none
rm -rf "$STAGE"
fs_s=$(($(now) - t))

rm -rf "$OUT"
mkdir -p "$OUT"
mv "$img" "$OUT/$name.img"
[ "$xz" -eq 0 ] || $NICE xz -T2 -6 -k "$OUT/$name.img"
cp "$LOGS"/*.log "$OUT/" 2>/dev/null || true
total_s=$(($(now) - started))
python3 - "$OUT/build.json" <<PY
import json, sys
json.dump({
    "image": "$OUT/$name.img", "key": "$image_key", "version": "$version", "kernel": "$kernel_version",
    "source": "$source_note", "kiosk": bool($kiosk), "size_mb": $total_mb,
    "partitions_mb": {"boot": $FAT_MB, "root": $root_mb, "data": $DATA_MB},
    "base": "$base_note", "install_s": $install_s, "filesystems_s": $fs_s, "total_s": $total_s,
    "python": "$py_version", "mirror": "$mirror", "built": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
}, open(sys.argv[1], "w"), indent=2)
PY
cp "$OUT/build.json" "$IMAGE_CACHE/latest.json"
# keep this image and the one before it
find "$IMAGE_CACHE/images" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn | tail -n +3 |
    cut -d' ' -f2- | while IFS= read -r old; do rm -rf --one-file-system "$old"; done
rm -rf --one-file-system "$ROOT"
{
    echo "image: $OUT/$name.img"
    echo "  ${total_mb} MiB: boot ${FAT_MB} MiB (FAT, RASPIFIRM), root ${root_mb} MiB (ext4, RASPIROOT, read-only), data ${DATA_MB} MiB (ext4, CKDATA; grows to the card at first boot)"
    echo "  Debian $SUITE arm64, kernel $kernel_version, $py_version; project: $source_note"
    echo "  base root: $base_note; install.sh: $(secs "$install_s"); file systems: $(secs "$fs_s"); total $(secs "$total_s")"
    [ "$xz" -eq 0 ] || echo "  compressed: $OUT/$name.img.xz ($(du -m "$OUT/$name.img.xz" | cut -f1) MiB)"
} >&2
echo "$OUT/$name.img"
