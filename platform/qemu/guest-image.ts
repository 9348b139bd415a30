import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { pathExists } from '../../dataplane';
import { BASE_APPEND, GUEST_AGENT_PORT } from './vm-process';

/**
 * A small bootable Linux guest for tests and demos of the QEMU driver, built from Debian packages on this machine:
 * the distribution's kernel, a busybox-static initramfs and the host's own `qemu-ga`. No root file system image to
 * download: the initramfs is the whole system, and the "root disk" is an ext4 data disk it mounts — or, for a VM that
 * boots through its firmware, the ext4 root partition of a disk that also holds the bootloader, kernel and initramfs.
 */

// Bump when the build steps change in a way the init script and module list below do not show.
const RECIPE_VERSION = 1;
// The Debian metapackage whose dependency names the current kernel package (linux-image-<release>-amd64).
const KERNEL_METAPACKAGE = 'linux-image-amd64';
// Loaded by hand, with their dependencies, in dependency order: the guest has no udev or modprobe configuration.
// crc32c_generic is only a soft dependency of ext4 and jbd2 (they ask the crypto API for "crc32c" at mount time), so
// modinfo's `depends` does not bring it in.
const ROOT_MODULES = ['virtio_pci', 'virtio_blk', 'virtio_console', 'crc32c_generic', 'ext4'];

/** Where the guest mounts its disks, and what its writer workload leaves on them. */
export const GUEST = {
  /** The root file system (ext4, required: `/dev/vda` unless {@link GUEST.rootParam} names another) is mounted here. */
  rootMount: '/mnt/root',
  /** Kernel command-line word naming the root file system's device, e.g. `snap.root=/dev/vda2`. */
  rootParam: 'snap.root',
  /** `/dev/vdb` (ext4), when the VM has a second disk, is mounted here. */
  dataMount: '/mnt/data',
  /** Kernel command-line word that starts the writer workload. */
  writerAppend: 'snap.writer=1',
  /**
   * The writer's tick count, rewritten atomically (a new file renamed over it) on every mounted disk each tick. It
   * equals the last line of {@link GUEST.writerLogFile} or the one before (a tick appends first, then renames).
   */
  writerCounterFile: 'writer-counter',
  /** One line per tick, appended: consecutive integers, one more per line, never a torn line. */
  writerLogFile: 'writer-log',
} as const;

/** The writer's ticks in the guest's serial console output: each tick, once written to every disk, prints its number. */
export function writerTicks(consoleOutput: string): number[] {
  return [...consoleOutput.matchAll(/^snap-writer (\d+)\r?$/gm)].map((match) => Number(match[1]));
}

/** The writer's ~100 ms between ticks: fast enough to catch a missed freeze, slow enough for a TCG guest. */
const WRITER_INTERVAL_S = '0.1';

/**
 * The initramfs's /init (busybox ash). It mounts the disks before starting qemu-ga, so `guest-fsfreeze-freeze` acts
 * on them; it never exits (init exiting panics the kernel) and powers the VM off on any failure, after saying why on
 * the console, so the host sees the VM exit instead of waiting for an agent that never comes.
 */
const INIT_SCRIPT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/sbin
# Power off; should that fail, init exiting panics the kernel, and panic=-1 with -no-reboot ends QEMU too.
fail() { echo "snap-guest: FAILED: $*"; poweroff -f; exit 1; }
# Up to 30 s for a device node or file to appear (module probing and devtmpfs are asynchronous).
wait_for() { i=0; while [ ! -e "$1" ]; do i=$((i + 1)); [ $i -gt 300 ] && return 1; sleep 0.1; done; }

mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev || fail "mounting proc, sys, dev"
while read -r module; do insmod "/lib/modules/$module" || fail "insmod $module"; done < /etc/modules

root=/dev/vda
for word in $(cat /proc/cmdline); do case "$word" in ${GUEST.rootParam}=*) root=\${word#${GUEST.rootParam}=};; esac; done
wait_for "$root" || fail "no $root: attach the root disk as virtio-blk"
mount -t ext4 "$root" ${GUEST.rootMount} || fail "mounting $root (ext4) at ${GUEST.rootMount}"
disks=${GUEST.rootMount}
if [ -e /sys/block/vdb ]; then
  wait_for /dev/vdb && mount -t ext4 /dev/vdb ${GUEST.dataMount} || fail "mounting /dev/vdb (ext4) at ${GUEST.dataMount}"
  disks="$disks ${GUEST.dataMount}"
fi

agent=
i=0
while [ -z "$agent" ]; do
  for port in /sys/class/virtio-ports/*; do
    [ "$(cat "$port/name" 2>/dev/null)" = ${GUEST_AGENT_PORT} ] && agent=/dev/\${port##*/}
  done
  i=$((i + 1)); [ $i -gt 300 ] && fail "no virtio-serial port named ${GUEST_AGENT_PORT}"
  [ -z "$agent" ] && sleep 0.1
done
wait_for "$agent" || fail "no device node $agent"
(while :; do qemu-ga -m virtio-serial -p "$agent" -t /run -f /run/qemu-ga.pid; echo "snap-guest: qemu-ga exited ($?)"; sleep 1; done) &

if grep -qw ${GUEST.writerAppend} /proc/cmdline; then
  (
    n=$(tail -n 1 ${GUEST.rootMount}/${GUEST.writerLogFile} 2>/dev/null)
    n=\${n:-0}
    while :; do
      n=$((n + 1))
      for disk in $disks; do
        echo $n >> "$disk/${GUEST.writerLogFile}" &&
          echo $n > "$disk/${GUEST.writerCounterFile}.tmp" &&
          mv "$disk/${GUEST.writerCounterFile}.tmp" "$disk/${GUEST.writerCounterFile}" ||
          echo "snap-writer: writing to $disk failed"
      done
      echo "snap-writer $n"
      sleep ${WRITER_INTERVAL_S}
    done
  ) &
fi
echo "snap-guest: ready (disks: $disks, agent on $agent)"
while :; do sleep 3600; done
`;

/** Building the guest image or a disk failed; the message says which step and what to install or fix. */
export class GuestImageError extends Error {
  readonly type = 'GuestImageBuildFailed';
}

/** The guest's boot files, for `startQemuVm`. */
export interface GuestImage {
  kernel: string;
  initrd: string;
  /** The Debian kernel package it was built from, e.g. `linux-image-6.1.0-57-amd64`. */
  kernelPackage: string;
}

/** Options of {@link ensureGuestImage}. */
export interface GuestImageOptions {
  /** The kernel package to build from. Default: the one `linux-image-amd64` depends on now. */
  kernelPackage?: string;
}

const stampSchema = z.object({ recipe: z.string(), kernelPackage: z.string() });

/**
 * Returns the guest's kernel and initramfs in `cacheFolder` (relative to the working directory, or absolute), building them first when they are missing or were built by
 * another recipe (a hash of the init script, the module list and the build steps' version, kept in a stamp file). A
 * build downloads the kernel package with `apt-get download` (about 70 MB), unpacks it with `dpkg-deb -x`, and packs
 * busybox-static, qemu-ga with the libraries `ldd` lists, the modules and /init with `cpio`. Concurrent builds into
 * one folder are safe: each works in its own temporary folder and renames its results into place, the stamp last.
 */
export async function ensureGuestImage(cacheFolder: string, options: GuestImageOptions = {}): Promise<GuestImage> {
  // The build runs tools in folders of its own: every path it hands them is absolute.
  const cacheDir = path.resolve(cacheFolder);
  const kernel = path.join(cacheDir, 'vmlinuz');
  const initrd = path.join(cacheDir, 'initrd.cpio');
  const stampFile = path.join(cacheDir, 'stamp.json');
  const recipe = createHash('sha256')
    .update(JSON.stringify({ RECIPE_VERSION, INIT_SCRIPT, ROOT_MODULES, kernelPackage: options.kernelPackage ?? '' }))
    .digest('hex');
  const stamp = await readStamp(stampFile);
  if (stamp?.recipe === recipe && (await pathExists(kernel)) && (await pathExists(initrd))) {
    return { kernel, initrd, kernelPackage: stamp.kernelPackage };
  }

  await fs.mkdir(cacheDir, { recursive: true });
  const work = await fs.mkdtemp(path.join(cacheDir, 'build-'));
  try {
    const kernelPackage = options.kernelPackage ?? (await currentKernelPackage());
    await run('apt-get', ['download', '-q', kernelPackage], { cwd: work });
    const deb = (await fs.readdir(work)).find((name) => name.endsWith('.deb'));
    if (!deb) throw new GuestImageError(`apt-get download ${kernelPackage} left no .deb in ${work}.`);
    const unpacked = path.join(work, 'package');
    await run('dpkg-deb', ['-x', deb, unpacked], { cwd: work });
    const [release] = await fs.readdir(path.join(unpacked, 'lib/modules'));
    const vmlinuz = path.join(unpacked, 'boot', `vmlinuz-${release}`);
    if (!release || !(await pathExists(vmlinuz))) {
      throw new GuestImageError(`${kernelPackage} has no /boot/vmlinuz-<release> and /lib/modules/<release>.`);
    }

    const root = path.join(work, 'initramfs');
    for (const dir of ['bin', 'etc', 'lib/modules', 'proc', 'sys', 'dev', 'run', GUEST.rootMount, GUEST.dataMount]) {
      await fs.mkdir(path.join(root, dir), { recursive: true });
    }
    await copyStaticBusybox(path.join(root, 'bin/busybox'));
    await copyWithLibraries('/usr/sbin/qemu-ga', root);
    const modulesDir = path.join(unpacked, 'lib/modules', release);
    const modules = await moduleLoadOrder(modulesDir, ROOT_MODULES);
    for (const module of modules) {
      await fs.copyFile(path.join(modulesDir, module), path.join(root, 'lib/modules', path.basename(module)));
    }
    await fs.writeFile(path.join(root, 'etc/modules'), modules.map((module) => path.basename(module) + '\n').join(''));
    await fs.writeFile(path.join(root, 'init'), INIT_SCRIPT, { mode: 0o755 });
    const packed = path.join(work, 'initrd.cpio');
    // Uncompressed (about 11 MB): nothing for the emulated CPU to inflate at boot.
    await run('sh', ['-c', 'cd "$1" && find . | cpio --quiet -o -H newc -R 0:0 > "$2"', 'sh', root, packed]);

    await fs.rename(vmlinuz, kernel);
    await fs.rename(packed, initrd);
    await fs.writeFile(path.join(work, 'stamp.json'), JSON.stringify({ recipe, kernelPackage }));
    await fs.rename(path.join(work, 'stamp.json'), stampFile);
    return { kernel, initrd, kernelPackage };
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}

/** Options of {@link createRootDisk}. */
export interface DiskOptions {
  /** The disk's virtual size; a whole number of MiB. */
  sizeBytes: number;
  /** Files to put in the file system: path relative to its root → content. Folders are created as needed. */
  files?: Record<string, string | Uint8Array>;
}

/**
 * Creates a qcow2 disk holding an ext4 file system with `files`, for the guest's `/dev/vda` (or `/dev/vdb`). Built
 * with `mke2fs -d` from a staging folder (no mount, no root needed), then converted to qcow2, the format persistent
 * dirty bitmaps need. Inode tables and journal are initialised up front, so the guest's kernel does not write them
 * lazily in the background (writes no workload made, which would show up in dirty bitmaps).
 */
export async function createRootDisk(diskPath: string, options: DiskOptions): Promise<void> {
  const { sizeBytes } = options;
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 2 ** 20 !== 0) {
    throw new GuestImageError(`Disk size ${sizeBytes} is not a positive whole number of MiB; pass e.g. 64 * 2 ** 20.`);
  }
  const staging = await fs.mkdtemp(`${diskPath}.staging-`);
  try {
    const tree = await stageFiles(staging, options.files);
    const raw = path.join(staging, 'disk.raw');
    await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-E', EXT4_FEATURES, '-d', tree, raw, `${sizeBytes / 1024}k`]);
    await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, diskPath]);
  } finally {
    await fs.rm(staging, { recursive: true, force: true });
  }
}

/** Inode tables and journal initialised up front (see createRootDisk), root-owned files. */
const EXT4_FEATURES = 'lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0';

/** Writes `files` into `<staging>/tree`, the folder `mke2fs -d` fills a file system from; returns it. */
async function stageFiles(staging: string, files: DiskOptions['files'] = {}): Promise<string> {
  const tree = path.join(staging, 'tree');
  await fs.mkdir(tree);
  for (const [name, content] of Object.entries(files)) {
    const target = path.resolve(tree, name);
    if (!target.startsWith(tree + path.sep)) {
      throw new GuestImageError(`File name ${JSON.stringify(name)} leaves the disk's root; use a relative path.`);
    }
    await fs.mkdir(path.dirname(target), { recursive: true });
    await fs.writeFile(target, content);
  }
  return tree;
}

/** Options of {@link createBootableDisk}. */
export interface BootableDiskOptions extends DiskOptions {
  /** The kernel and initramfs the disk boots. */
  image: GuestImage;
  /** Added to the kernel command line (e.g. `snap.writer=1`). */
  append?: string;
}

const SECTOR = 512;
/** The boot partition: FAT16 at 1 MiB, 48 MiB (the kernel and initramfs take about 20 MiB). */
const BOOT_PARTITION = { startSector: 2048, sectors: 48 * 2048 };
const ROOT_START_SECTOR = BOOT_PARTITION.startSector + BOOT_PARTITION.sectors;
/**
 * syslinux's files, with the Debian package that has each: the MBR boot code (the first 440 bytes of the disk, which
 * boots the active partition), and the UEFI loader with its core module.
 */
const SYSLINUX_FILES = {
  mbr: { file: '/usr/lib/syslinux/mbr/mbr.bin', package: 'syslinux-common' },
  efi: { file: '/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi', package: 'syslinux-efi' },
  efiCore: { file: '/usr/lib/syslinux/modules/efi64/ldlinux.e64', package: 'syslinux-common' },
} as const;

/**
 * Creates a qcow2 disk that a VM boots from through its firmware, BIOS or UEFI, as a cloud image does: an MBR
 * partition table, a bootable FAT partition with syslinux for both (installed in the partition for the BIOS, and as
 * the removable-media loader `\EFI\BOOT\BOOTX64.EFI` for UEFI), the guest's kernel and initramfs, and an ext4 root
 * partition (`/dev/vda2` in the guest, holding `files`) after it; `sizeBytes` is the whole disk's. Built without
 * mounting anything: `sfdisk` on the image file, `mkfs.vfat`/`mke2fs` at the partitions' offsets, `mcopy` and
 * `syslinux --install --offset` into the FAT partition.
 */
export async function createBootableDisk(diskPath: string, options: BootableDiskOptions): Promise<void> {
  const { sizeBytes, image } = options;
  const rootBytes = sizeBytes - ROOT_START_SECTOR * SECTOR;
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes % 2 ** 20 !== 0 || rootBytes < 16 * 2 ** 20) {
    throw new GuestImageError(
      `Disk size ${sizeBytes} is not a whole number of MiB of at least 65 MiB; pass e.g. 128 * 2 ** 20.`,
    );
  }
  for (const { file, package: debianPackage } of Object.values(SYSLINUX_FILES)) {
    if (!(await pathExists(file))) throw new GuestImageError(`${file} is missing; apt-get install ${debianPackage}.`);
  }
  const staging = await fs.mkdtemp(`${diskPath}.staging-`);
  try {
    const raw = path.join(staging, 'disk.raw');
    await fs.writeFile(raw, '');
    await fs.truncate(raw, sizeBytes);
    const table = [
      'label: dos',
      `start=${BOOT_PARTITION.startSector}, size=${BOOT_PARTITION.sectors}, type=6, bootable`,
      `start=${ROOT_START_SECTOR}, type=83`,
    ];
    // sfdisk reads the table on stdin: one line per argument (`$0` is the image).
    await run('sh', ['-c', 'printf "%s\\n" "$@" | sfdisk -q "$0"', raw, ...table]);
    await run('dd', [`if=${SYSLINUX_FILES.mbr.file}`, `of=${raw}`, 'bs=440', 'count=1', 'conv=notrunc', 'status=none']);
    const bootOffset = BOOT_PARTITION.startSector * SECTOR;
    await run('mkfs.vfat', [
      '--offset',
      String(BOOT_PARTITION.startSector),
      '-n',
      'BOOT',
      raw,
      String(BOOT_PARTITION.sectors / 2),
    ]);
    const append = [BASE_APPEND, `${GUEST.rootParam}=/dev/vda2`, options.append ?? ''];
    const config = path.join(staging, 'syslinux.cfg');
    await fs.writeFile(
      config,
      [
        'DEFAULT linux',
        'PROMPT 0',
        'TIMEOUT 0',
        'LABEL linux',
        '  KERNEL /vmlinuz',
        '  INITRD /initrd.cpio',
        `  APPEND ${append.join(' ').trim()}`,
        '',
      ].join('\n'),
    );
    const kernel = path.join(staging, 'vmlinuz');
    const initrd = path.join(staging, 'initrd.cpio');
    await fs.copyFile(image.kernel, kernel);
    await fs.copyFile(image.initrd, initrd);
    const fat = `${raw}@@${bootOffset}`;
    await run('mcopy', ['-i', fat, kernel, initrd, config, '::']);
    await run('syslinux', ['--install', '--offset', String(bootOffset), raw]);
    // UEFI: syslinux.efi looks for its core module and configuration in its own folder.
    await run('mmd', ['-i', fat, '::/EFI', '::/EFI/BOOT']);
    await run('mcopy', ['-i', fat, SYSLINUX_FILES.efi.file, '::/EFI/BOOT/BOOTX64.EFI']);
    await run('mcopy', ['-i', fat, SYSLINUX_FILES.efiCore.file, config, '::/EFI/BOOT/']);
    const tree = await stageFiles(staging, options.files);
    await run('mke2fs', [
      '-q',
      '-F',
      '-t',
      'ext4',
      '-E',
      `${EXT4_FEATURES},offset=${ROOT_START_SECTOR * SECTOR}`,
      '-d',
      tree,
      raw,
      `${rootBytes / 1024}k`,
    ]);
    await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, diskPath]);
  } finally {
    await fs.rm(staging, { recursive: true, force: true });
  }
}

// Which Debian package brings each host tool, for the message when one is missing.
const PACKAGE_OF: Record<string, string> = {
  'apt-get': 'apt',
  'apt-cache': 'apt',
  'dpkg-deb': 'dpkg',
  cpio: 'cpio',
  ldd: 'libc-bin',
  mke2fs: 'e2fsprogs',
  'qemu-img': 'qemu-utils',
  sh: 'dash',
  dd: 'coreutils',
  sfdisk: 'fdisk',
  'mkfs.vfat': 'dosfstools',
  mcopy: 'mtools',
  mmd: 'mtools',
  syslinux: 'syslinux syslinux-common',
};

/** Runs a host tool and resolves with its stdout; a failure names the tool, its package if missing, and its stderr. */
function run(command: string, args: readonly string[], options: { cwd?: string } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { ...options, maxBuffer: 16 * 2 ** 20 }, (error, stdout, stderr) => {
      if (!error) return resolve(stdout);
      const missing = (error as NodeJS.ErrnoException).code === 'ENOENT';
      const hint = missing ? ` (not installed? apt-get install ${PACKAGE_OF[command] ?? command})` : '';
      reject(new GuestImageError(`${command} ${args.join(' ')} failed${hint}: ${stderr.trim() || error.message}`));
    });
  });
}

/** The kernel package the metapackage points at now (security updates move it). */
async function currentKernelPackage(): Promise<string> {
  const depends = await run('apt-cache', ['depends', KERNEL_METAPACKAGE]);
  const match = /Depends: (linux-image-\S+)/.exec(depends);
  if (!match?.[1]) {
    throw new GuestImageError(
      `apt-cache depends ${KERNEL_METAPACKAGE} names no kernel package; run apt-get update, or pass kernelPackage.`,
    );
  }
  return match[1];
}

/** The initramfs has no libraries: its busybox must be the static build (Debian's busybox-static). */
async function copyStaticBusybox(target: string): Promise<void> {
  const busybox = '/bin/busybox';
  if (!(await pathExists(busybox))) throw new GuestImageError(`${busybox} is missing; apt-get install busybox-static.`);
  const linked = await run('ldd', [busybox]).then(
    () => true,
    () => false,
  );
  if (linked) throw new GuestImageError(`${busybox} is dynamically linked; apt-get install busybox-static.`);
  await fs.copyFile(busybox, target);
  await fs.chmod(target, 0o755);
}

/** Copies a host binary and every library `ldd` lists for it (the loader included) to the same paths under `root`. */
async function copyWithLibraries(binary: string, root: string): Promise<void> {
  const files = [binary, ...[...(await run('ldd', [binary])).matchAll(/(\/\S+) \(0x[0-9a-f]+\)/g)].map((m) => m[1]!)];
  for (const file of files) {
    const target = path.join(root, file);
    await fs.mkdir(path.dirname(target), { recursive: true });
    await fs.copyFile(await fs.realpath(file), target);
    await fs.chmod(target, 0o755);
  }
}

/**
 * The module files (relative to `modulesDir`) to insmod for `roots`, each after its dependencies. The package has no
 * modules.dep (depmod runs at install time), so dependencies come from each module's `.modinfo` section; roots that
 * are built into this kernel (modules.builtin) need nothing.
 */
async function moduleLoadOrder(modulesDir: string, roots: readonly string[]): Promise<string[]> {
  const nameOf = (file: string): string => path.basename(file).replace(/\.ko$/, '').replaceAll('-', '_');
  const files = new Map<string, string>();
  for (const entry of await fs.readdir(path.join(modulesDir, 'kernel'), { recursive: true })) {
    if (entry.endsWith('.ko')) files.set(nameOf(entry), path.join('kernel', entry));
  }
  const builtin = new Set(
    (await fs.readFile(path.join(modulesDir, 'modules.builtin'), 'utf8')).split('\n').map(nameOf),
  );
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = async (name: string): Promise<void> => {
    if (seen.has(name) || builtin.has(name)) return;
    seen.add(name);
    const file = files.get(name);
    if (!file) throw new GuestImageError(`Kernel module ${name} is neither in ${modulesDir} nor built in.`);
    const depends = modinfo(await fs.readFile(path.join(modulesDir, file))).get('depends') ?? '';
    for (const dependency of depends.split(',').filter(Boolean)) await visit(dependency);
    order.push(file);
  };
  for (const root of roots) await visit(root);
  return order;
}

/** The `key=value` strings of an ELF64 little-endian kernel module's `.modinfo` section. */
function modinfo(elf: Buffer): Map<string, string> {
  const sectionTable = Number(elf.readBigUInt64LE(0x28));
  const entrySize = elf.readUInt16LE(0x3a);
  const count = elf.readUInt16LE(0x3c);
  const section = (index: number) => {
    const at = sectionTable + index * entrySize;
    return {
      name: elf.readUInt32LE(at),
      offset: Number(elf.readBigUInt64LE(at + 0x18)),
      size: Number(elf.readBigUInt64LE(at + 0x20)),
    };
  };
  const names = section(elf.readUInt16LE(0x3e));
  const info = new Map<string, string>();
  for (let index = 0; index < count; index++) {
    const { name, offset, size } = section(index);
    const end = elf.indexOf(0, names.offset + name);
    if (elf.toString('latin1', names.offset + name, end) !== '.modinfo') continue;
    for (const entry of elf.toString('latin1', offset, offset + size).split('\0')) {
      const equals = entry.indexOf('=');
      if (equals > 0) info.set(entry.slice(0, equals), entry.slice(equals + 1));
    }
  }
  return info;
}

async function readStamp(file: string): Promise<z.infer<typeof stampSchema> | undefined> {
  try {
    return stampSchema.parse(JSON.parse(await fs.readFile(file, 'utf8')));
  } catch {
    return undefined;
  }
}
