import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { z } from 'zod';
import { GuestAgentClient } from '../../platform/qemu/guest-agent';
import { createRootDisk, ensureGuestImage, GUEST, writerTicks, type GuestImage } from '../../platform/qemu/guest-image';
import { QmpClient } from '../../platform/qemu/qmp';
import { startQemuVm, type QemuVm } from '../../platform/qemu/vm-process';

/**
 * One boot for the whole file (about 30 s under TCG here, more on a loaded machine): the tests run in order on the
 * same guest, the last one stopping it.
 */

const exec = promisify(execFile);
// The first run builds the image (download and pack, about 30 s); a boot takes 30–60 s under TCG on 2 busy cores.
const SETUP_TIMEOUT_MS = 600_000;
const BOOT_TIMEOUT_MS = 300_000;
// Generous: only a broken guest takes this long to write three more ticks.
const PROGRESS_TIMEOUT_MS = 60_000;
const HELLO = 'written by createRootDisk on the host\n';

const fileOpenSchema = z.number().int();
const fileReadSchema = z.object({ count: z.number().int(), 'buf-b64': z.string(), eof: z.boolean() });
const imageInfoSchema = z.object({
  'format-specific': z.object({
    data: z.object({
      bitmaps: z.array(z.object({ name: z.string(), flags: z.array(z.string()), granularity: z.number() })).optional(),
    }),
  }),
});

let image: GuestImage;
let dir: string;
let rootDisk: string;
let dataDisk: string;
let vm: QemuVm | undefined;
let agent: GuestAgentClient | undefined;

beforeAll(async () => {
  image = await ensureGuestImage(path.join(__dirname, '../../.cache/guest'));
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'snap-vm-'));
  rootDisk = path.join(dir, 'root.qcow2');
  dataDisk = path.join(dir, 'data.qcow2');
  await createRootDisk(rootDisk, { sizeBytes: 64 * 2 ** 20, files: { 'docs/hello.txt': HELLO } });
  await createRootDisk(dataDisk, { sizeBytes: 32 * 2 ** 20 });
  vm = await startQemuVm({
    dir,
    disks: [
      { nodeName: 'root', path: rootDisk },
      { nodeName: 'data', path: dataDisk },
    ],
    boot: { kernel: image.kernel, initrd: image.initrd, append: GUEST.writerAppend },
  });
  await vm.waitForAgent(BOOT_TIMEOUT_MS);
  agent = await GuestAgentClient.connect(vm.agentSocket);
}, SETUP_TIMEOUT_MS);

afterAll(async () => {
  await agent?.close();
  await vm?.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

/** The writer's last tick the guest printed on its console, 0 before the first. */
async function lastTick(): Promise<number> {
  return writerTicks(await fs.readFile(vm!.consoleLog, 'utf8')).at(-1) ?? 0;
}

async function waitForTick(atLeast: number): Promise<void> {
  const deadline = Date.now() + PROGRESS_TIMEOUT_MS;
  while ((await lastTick()) < atLeast) {
    if (Date.now() > deadline)
      throw new Error(`The writer did not reach tick ${atLeast}: it is at ${await lastTick()}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

async function readGuestFile(guestPath: string): Promise<string> {
  const handle = fileOpenSchema.parse(await agent!.execute('guest-file-open', { path: guestPath, mode: 'r' }));
  try {
    const read = fileReadSchema.parse(await agent!.execute('guest-file-read', { handle, count: 65536 }));
    expect(read.eof).toBe(true);
    return Buffer.from(read['buf-b64'], 'base64').toString('utf8');
  } finally {
    await agent!.execute('guest-file-close', { handle });
  }
}

/** The file's content in the ext4 of a (stopped) qcow2 disk, read on the host with debugfs. */
async function hostRead(raw: string, file: string): Promise<string> {
  return (await exec('debugfs', ['-R', `cat /${file}`, raw])).stdout;
}

/** Lines of the writer's log: consecutive integers; returns the last. */
function checkLog(log: string): number {
  const lines = log.trimEnd().split('\n').map(Number);
  expect(lines.length).toBeGreaterThan(0);
  lines.forEach((value, index) => expect(value).toBe(lines[0]! + index));
  return lines.at(-1)!;
}

test('the guest boots, its agent answers, and a file createRootDisk put on the root disk reads back in the guest', async () => {
  await agent!.ping();
  expect(await readGuestFile(`${GUEST.rootMount}/docs/hello.txt`)).toBe(HELLO);
});

test('a freeze stops the writer on both disks and a thaw lets it continue', async () => {
  await waitForTick((await lastTick()) + 3);
  expect(await agent!.fsfreezeFreeze()).toBe(2);
  try {
    const frozenAt = await lastTick();
    // Unfrozen, the writer ticks several times in this pause; frozen, at most the tick already written may still
    // print.
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    expect(await agent!.fsfreezeStatus()).toBe('frozen');
    expect((await lastTick()) - frozenAt).toBeLessThanOrEqual(1);
  } finally {
    expect(await agent!.fsfreezeThaw()).toBe(2);
  }
  await waitForTick((await lastTick()) + 3);
});

test('stop() after a freeze leaves clean images: bitmaps consistent, ext4 clean, every printed tick on disk', async () => {
  const qmp = await QmpClient.connect(vm!.qmpSocket);
  try {
    for (const node of ['root', 'data']) {
      await qmp.execute('block-dirty-bitmap-add', { node, name: 'cp-1', persistent: true });
    }
  } finally {
    await qmp.close();
  }
  await waitForTick((await lastTick()) + 2);
  // The freeze syncs the guest's page cache: what the writer printed is on the disks before QEMU stops.
  expect(await agent!.fsfreezeFreeze()).toBe(2);
  await agent!.close();
  await vm!.stop();
  await expect(vm!.exited).resolves.toBe('code 0');
  const printed = await lastTick();

  for (const disk of [rootDisk, dataDisk]) {
    await exec('qemu-img', ['check', '-q', disk]);
    const info = imageInfoSchema.parse(JSON.parse((await exec('qemu-img', ['info', '--output=json', disk])).stdout));
    // No `in-use` flag: QEMU wrote the bitmap back and released it.
    expect(info['format-specific'].data.bitmaps).toEqual([{ name: 'cp-1', flags: ['auto'], granularity: 65536 }]);

    const raw = disk.replace(/\.qcow2$/, '.raw');
    await exec('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', disk, raw]);
    await exec('e2fsck', ['-fn', raw]);
    const last = checkLog(await hostRead(raw, GUEST.writerLogFile));
    // The tick in progress at the freeze may have reached the disk without being printed.
    expect(last).toBeGreaterThanOrEqual(printed);
    expect(last).toBeLessThanOrEqual(printed + 1);
    expect([last - 1, last]).toContain(Number(await hostRead(raw, GUEST.writerCounterFile)));
  }
});

test('a VM whose disk does not open fails to start with QEMU saying which file', async () => {
  const missing = path.join(dir, 'missing.qcow2');
  const vmDir = await fs.mkdtemp(path.join(dir, 'vm-'));
  await expect(
    startQemuVm({
      dir: vmDir,
      disks: [{ nodeName: 'root', path: missing }],
      boot: { kernel: image.kernel, initrd: image.initrd },
    }),
  ).rejects.toMatchObject({
    type: 'QemuProcessExited',
    message: expect.stringMatching(/exited with code 1 before listening[\s\S]*missing\.qcow2/) as unknown,
  });
});

test('a guest whose root disk holds no ext4 powers off, and waitForAgent says why from its console', async () => {
  const vmDir = await fs.mkdtemp(path.join(dir, 'vm-'));
  const blank = path.join(vmDir, 'blank.qcow2');
  await exec('qemu-img', ['create', '-q', '-f', 'qcow2', blank, '8M']);
  const broken = await startQemuVm({
    dir: vmDir,
    disks: [{ nodeName: 'root', path: blank }],
    boot: { kernel: image.kernel, initrd: image.initrd },
  });
  try {
    await expect(broken.waitForAgent(BOOT_TIMEOUT_MS)).rejects.toMatchObject({
      type: 'QemuProcessExited',
      message: expect.stringMatching(/snap-guest: FAILED: mounting \/dev\/vda \(ext4\)/) as unknown,
    });
  } finally {
    await broken.stop();
  }
});

test('ensureGuestImage reuses a built image while its recipe is unchanged', async () => {
  const before = await fs.stat(image.initrd);
  expect(await ensureGuestImage(path.dirname(image.initrd))).toEqual(image);
  expect((await fs.stat(image.initrd)).mtimeMs).toBe(before.mtimeMs);
});

test('createRootDisk refuses a size that is not whole MiB and a file name outside the disk, leaving nothing', async () => {
  const disk = path.join(dir, 'refused.qcow2');
  await expect(createRootDisk(disk, { sizeBytes: 2 ** 20 + 512 })).rejects.toMatchObject({
    type: 'GuestImageBuildFailed',
    message: expect.stringContaining('whole number of MiB') as unknown,
  });
  await expect(createRootDisk(disk, { sizeBytes: 8 * 2 ** 20, files: { '../x': 'x' } })).rejects.toMatchObject({
    type: 'GuestImageBuildFailed',
    message: expect.stringContaining("leaves the disk's root") as unknown,
  });
  expect((await fs.readdir(dir)).filter((name) => name.startsWith('refused'))).toEqual([]);
});
