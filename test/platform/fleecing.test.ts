import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { z } from 'zod';
import {
  CheckpointUnusable,
  abandonCheckpoint,
  bitmapsOf,
  commitCheckpoint,
  inspectCheckpoint,
} from '../../platform/qemu/bitmaps';
import { FleecingNodeNotFoundError, ProtocolCommandError } from '../../platform/qemu/errors';
import { closeViews, openViews } from '../../platform/qemu/fleecing';
import type { DiskView, FleecingDisk } from '../../platform/qemu/fleecing';
import { NBD_STATE_DIRTY, NbdClient } from '../../platform/qemu/nbd';
import type { NbdExtent } from '../../platform/qemu/nbd';
import { NbdDiskReader } from '../../platform/qemu/nbd-reader';
import { QmpClient } from '../../platform/qemu/qmp';
import { startStorageDaemon, type StorageDaemon } from '../../platform/qemu/storage-daemon';

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;
const DISK_BYTES = 16 * MiB;
/** qcow2's default cluster: the granularity of the checkpoint bitmaps. */
const CLUSTER = 64 * KiB;
const RECORD = 4 * KiB;
const DISKS = ['disk0', 'disk1'] as const;

let dir: string;
let tempDir: string;
let nbdSocket: string;
let daemon: StorageDaemon | undefined;
let qmp: QmpClient | undefined;
const clients: { disconnect(): Promise<void> }[] = [];

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'snap-fleece-'));
  tempDir = path.join(dir, 'tmp');
  nbdSocket = path.join(dir, 'nbd.sock');
  await fs.mkdir(tempDir);
  for (const disk of DISKS) await run('qemu-img', ['create', '-q', '-f', 'qcow2', image(disk), String(DISK_BYTES)]);
  await start();
});

afterEach(async () => {
  for (const client of clients.splice(0)) await client.disconnect().catch(() => undefined);
  await qmp?.close();
  await daemon?.stop();
  qmp = daemon = undefined;
  await fs.rm(dir, { recursive: true, force: true });
});

function image(disk: string): string {
  return path.join(dir, `${disk}.qcow2`);
}

async function start(): Promise<QmpClient> {
  daemon = await startStorageDaemon({ dir, disks: DISKS.map((disk) => ({ nodeName: disk, path: image(disk) })) });
  qmp = await QmpClient.connect(daemon.qmpSocket);
  return qmp;
}

function disks(parentBitmap: string | null): FleecingDisk[] {
  return DISKS.map((disk) => ({ name: `vd-${disk}`, nodeName: disk, parentBitmap }));
}

/** The live disks, writable through the daemon's block layer (exports on the NBD server the views reuse). */
async function liveWriters(q: QmpClient): Promise<NbdClient[]> {
  await q.execute('nbd-server-start', { addr: { type: 'unix', data: { path: nbdSocket } } });
  const writers: NbdClient[] = [];
  for (const disk of DISKS) {
    await q.execute('block-export-add', {
      type: 'nbd',
      id: `w-${disk}`,
      'node-name': disk,
      name: disk,
      writable: true,
    });
    writers.push(await connect({ socketPath: nbdSocket, exportName: disk }));
  }
  return writers;
}

async function connect(options: Parameters<typeof NbdClient.connect>[0]): Promise<NbdClient> {
  const client = await NbdClient.connect(options);
  clients.push(client);
  return client;
}

async function readView(view: DiskView): Promise<Buffer> {
  const reader = await NbdDiskReader.open({ socketPath: view.socketPath, exportName: view.exportName });
  try {
    const bytes = Buffer.alloc(reader.size);
    await reader.read(bytes, 0);
    return bytes;
  } finally {
    await reader.close();
  }
}

function sha256(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Write number `n` (from 1): a 4 KiB record carrying `n`, at a position that spreads the writes over the disk. */
function record(n: number): { offset: number; data: Buffer } {
  const data = Buffer.alloc(RECORD, n & 0xff);
  data.writeBigUInt64BE(BigInt(n), 0);
  return { offset: ((n * 7919) % (DISK_BYTES / RECORD)) * RECORD, data };
}

/** The disk after writes 1..n of {@link record}, on a disk of zeroes. */
function afterWrites(n: number): Buffer {
  const bytes = Buffer.alloc(DISK_BYTES);
  for (let i = 1; i <= n; i++) {
    const { offset, data } = record(i);
    data.copy(bytes, offset);
  }
  return bytes;
}

/** The highest write number found in a disk's bytes. */
function lastWrite(bytes: Buffer): number {
  let last = 0;
  for (let offset = 0; offset < bytes.length; offset += RECORD) {
    last = Math.max(last, Number(bytes.readBigUInt64BE(offset)));
  }
  return last;
}

const exportsSchema = z.array(z.object({ id: z.string() }));
const jobsSchema = z.array(z.object({ device: z.string() }));

/** Everything of any view that is still there: nodes, exports, jobs (all views' names start with `fl-`), files. */
async function leftovers(q: QmpClient) {
  const nodes = z.array(z.object({ 'node-name': z.string() })).parse(await q.execute('query-named-block-nodes'));
  return {
    nodes: nodes.map((node) => node['node-name']).filter((name) => name.startsWith('fl-')),
    exports: exportsSchema
      .parse(await q.execute('query-block-exports'))
      .map((exported) => exported.id)
      .filter((id) => !id.startsWith('w-')),
    jobs: jobsSchema.parse(await q.execute('query-block-jobs')).map((job) => job.device),
    files: await fs.readdir(tempDir),
  };
}
const NOTHING = { nodes: [], exports: [], jobs: [], files: [] };

async function bitmapNames(q: QmpClient, node: string): Promise<string[]> {
  return ((await bitmapsOf(q, node)) ?? []).map((bitmap) => bitmap.name).sort();
}

/** The clusters marked dirty by `context` on the view, as [first byte, end) ranges. */
async function dirtyRanges(view: DiskView): Promise<[number, number][]> {
  const context = view.dirtyBitmapContext!;
  const client = await connect({ socketPath: view.socketPath, exportName: view.exportName, metaContexts: [context] });
  const extents: NbdExtent[] = await client.blockStatus(context, 0, view.sizeBytes);
  await client.disconnect();
  return extents
    .filter((extent) => extent.flags & NBD_STATE_DIRTY)
    .map((extent) => [extent.offset, extent.offset + extent.length]);
}

/** Takes a full snapshot's views of both disks and settles it as a success: `bitmap` is then the checkpoint. */
async function fullCheckpoint(q: QmpClient, viewId: string, bitmap: string): Promise<void> {
  await openViews(q, { viewId, tempDir, nbdSocket, disks: disks(null), newBitmap: bitmap });
  await closeViews(q, { viewId, tempDir });
  await commitCheckpoint(q, disks(null));
}

test('the views hold both disks as of the transaction, consistent with each other, while a writer keeps writing; only the transaction is at the point in time', async () => {
  const q = qmp!;
  const [w0, w1] = await liveWriters(q);
  let written = 0;
  let stop = false;
  const writer = (async () => {
    // Each write goes to disk0, then the same to disk1: at any moment disk1 is at most one write behind.
    for (let n = 1; !stop; n++) {
      const { offset, data } = record(n);
      await w0!.write(offset, data);
      await w1!.write(offset, data);
      written = n;
    }
  })();
  while (written < 300) await new Promise((resolve) => setTimeout(resolve, 10));

  // Only the transaction runs through atPointInTime (where initiation freezes the guest): the temporary images and
  // their nodes exist before it, the bitmaps come with it, the access nodes and exports after it.
  let beforeOpen = 0;
  let afterOpen = 0;
  const atStep: Awaited<ReturnType<typeof leftovers>>[] = [];
  const views = await openViews(q, {
    viewId: 'snap-1',
    tempDir,
    nbdSocket,
    disks: disks(null),
    newBitmap: 'cp-1',
    atPointInTime: async (step) => {
      atStep.push(await leftovers(q));
      expect(await bitmapNames(q, 'disk0')).toEqual([]);
      beforeOpen = written;
      const result = await step();
      afterOpen = written;
      expect(await bitmapNames(q, 'disk0')).toEqual(['cp-1']);
      return result;
    },
  });
  expect(atStep).toHaveLength(1);
  expect(atStep[0]!.nodes.filter((node) => !node.endsWith('-tmp'))).toEqual([]);
  expect(atStep[0]!.nodes).toHaveLength(DISKS.length);
  expect(atStep[0]!.exports).toEqual([]);
  expect((await leftovers(q)).exports).toHaveLength(DISKS.length);
  expect(views.map((view) => [view.name, view.sizeBytes, view.dirtyBitmapContext])).toEqual([
    ['vd-disk0', DISK_BYTES, null],
    ['vd-disk1', DISK_BYTES, null],
  ]);
  // The views are read while the guest goes on overwriting the disks.
  while (written < afterOpen + 300) await new Promise((resolve) => setTimeout(resolve, 10));
  const [bytes0, bytes1] = [await readView(views[0]!), await readView(views[1]!)];
  stop = true;
  await writer;

  const [last0, last1] = [lastWrite(bytes0), lastWrite(bytes1)];
  // The transaction ran inside atPointInTime; a write in flight may have reached disk0 and not yet disk1.
  expect(last0).toBeGreaterThanOrEqual(beforeOpen);
  expect(last0).toBeLessThanOrEqual(afterOpen + 1);
  expect([last0, last0 - 1]).toContain(last1);
  expect(sha256(bytes0)).toBe(sha256(afterWrites(last0)));
  expect(sha256(bytes1)).toBe(sha256(afterWrites(last1)));

  await closeViews(q, { viewId: 'snap-1', tempDir });
  expect(await leftovers(q)).toEqual(NOTHING);
});

test('an incremental view marks exactly the clusters written since the parent; abandon keeps them, commit drops the parent', async () => {
  const q = qmp!;
  const [w0] = await liveWriters(q);
  await fullCheckpoint(q, 'snap-1', 'cp-1');
  expect(await bitmapNames(q, 'disk0')).toEqual(['cp-1']);

  // Writes since the parent: inside one cluster, across two clusters, and the disk's last byte.
  await w0!.write(3 * CLUSTER + 1000, Buffer.alloc(512, 1));
  await w0!.write(11 * CLUSTER - 100, Buffer.alloc(200, 2));
  await w0!.write(DISK_BYTES - 1, Buffer.alloc(1, 3));
  await expect(inspectCheckpoint(q, 'disk0', 'cp-1')).resolves.toEqual({ usable: true });
  const since1: [number, number][] = [
    [3 * CLUSTER, 4 * CLUSTER],
    [10 * CLUSTER, 12 * CLUSTER],
    [DISK_BYTES - CLUSTER, DISK_BYTES],
  ];

  let views = await openViews(q, { viewId: 'snap-2', tempDir, nbdSocket, disks: disks('cp-1'), newBitmap: 'cp-2' });
  expect(views[0]!.dirtyBitmapContext).toBe('qemu:dirty-bitmap:cp-1');
  // A write after the transaction is not in the view's bitmap, and not in the view's bytes.
  await w0!.write(100 * CLUSTER, Buffer.alloc(RECORD, 4));
  expect(await dirtyRanges(views[0]!)).toEqual(since1);
  expect(await dirtyRanges(views[1]!)).toEqual([]);
  expect((await readView(views[0]!)).subarray(100 * CLUSTER, 100 * CLUSTER + RECORD)).toEqual(Buffer.alloc(RECORD));

  // The snapshot fails: the parent's bitmap takes back every write, including the one made during the view.
  await closeViews(q, { viewId: 'snap-2', tempDir });
  await abandonCheckpoint(q, disks('cp-1'), 'cp-2');
  await abandonCheckpoint(q, disks('cp-1'), 'cp-2');
  expect(await bitmapNames(q, 'disk0')).toEqual(['cp-1']);
  await w0!.write(200 * CLUSTER, Buffer.alloc(RECORD, 5));

  views = await openViews(q, { viewId: 'snap-3', tempDir, nbdSocket, disks: disks('cp-1'), newBitmap: 'cp-3' });
  expect(await dirtyRanges(views[0]!)).toEqual([
    ...since1.slice(0, 2),
    [100 * CLUSTER, 101 * CLUSTER],
    [200 * CLUSTER, 201 * CLUSTER],
    since1[2],
  ]);
  // The snapshot succeeds: only its own bitmap is left, on every disk, and a retry changes nothing.
  await closeViews(q, { viewId: 'snap-3', tempDir });
  await commitCheckpoint(q, disks('cp-1'));
  await commitCheckpoint(q, disks('cp-1'));
  for (const disk of DISKS) expect(await bitmapNames(q, disk)).toEqual(['cp-3']);
  expect(await leftovers(q)).toEqual(NOTHING);
});

test('after a SIGKILL of QEMU the checkpoint is inconsistent: it is removed and the next view is a full capture', async () => {
  let q = qmp!;
  await fullCheckpoint(q, 'snap-1', 'cp-1');
  // Saved into the image by a clean exit, then loaded by the next process, which is killed.
  await q.close();
  await daemon!.stop();
  await start();
  await qmp!.close();
  process.kill(daemon!.pid, 'SIGKILL');
  await daemon!.exited;
  q = await start();

  await expect(inspectCheckpoint(q, 'disk0', 'cp-1')).resolves.toEqual({
    usable: false,
    reason: CheckpointUnusable.inconsistent('cp-1'),
  });
  expect(await bitmapNames(q, 'disk0')).toEqual([]);
  await expect(inspectCheckpoint(q, 'disk0', 'cp-1')).resolves.toEqual({
    usable: false,
    reason: CheckpointUnusable.missing('cp-1'),
  });
  await expect(inspectCheckpoint(q, 'disk0', null)).resolves.toEqual({
    usable: false,
    reason: CheckpointUnusable.noParentBitmap,
  });

  const views = await openViews(q, { viewId: 'snap-2', tempDir, nbdSocket, disks: disks(null), newBitmap: 'cp-2' });
  expect(views.map((view) => view.dirtyBitmapContext)).toEqual([null, null]);
  expect(sha256(await readView(views[0]!))).toBe(sha256(Buffer.alloc(DISK_BYTES)));
  await closeViews(q, { viewId: 'snap-2', tempDir });
});

test('a view that fails to open leaves nothing behind, and the bitmaps as they were', async () => {
  const q = qmp!;
  await fullCheckpoint(q, 'snap-1', 'cp-1');
  const missingNode = [...disks('cp-1').slice(0, 1), { name: 'vd-x', nodeName: 'no-such-node', parentBitmap: null }];
  await expect(
    openViews(q, { viewId: 'snap-2', tempDir, nbdSocket, disks: missingNode, newBitmap: 'cp-2' }),
  ).rejects.toBeInstanceOf(FleecingNodeNotFoundError);

  // disk1 has no bitmap cp-0: the transaction fails as a whole, after the temporary images were added.
  const badParent = [disks('cp-1')[0]!, { ...disks('cp-0')[1]! }];
  const failure = await openViews(q, { viewId: 'snap-2', tempDir, nbdSocket, disks: badParent, newBitmap: 'cp-2' })
    .then(() => undefined)
    .catch((error: unknown) => error);
  expect(failure).toBeInstanceOf(ProtocolCommandError);
  expect((failure as ProtocolCommandError).command).toBe('transaction');
  expect(await leftovers(q)).toEqual(NOTHING);
  for (const disk of DISKS) expect(await bitmapsOf(q, disk)).toMatchObject([{ name: 'cp-1', recording: true }]);
  await expect(fs.access(nbdSocket)).rejects.toThrow();
});

test('closeViews removes every piece, even with a reader connected; it is idempotent, and reopening replaces a view', async () => {
  const q = qmp!;
  await openViews(q, { viewId: 'snap-1', tempDir, nbdSocket, disks: disks(null), newBitmap: 'cp-1' });
  // An earlier attempt of the same view left its pieces (and its bitmap): opening again starts from scratch.
  const views = await openViews(q, { viewId: 'snap-1', tempDir, nbdSocket, disks: disks(null), newBitmap: 'cp-1' });
  expect((await leftovers(q)).files).toHaveLength(2);
  for (const disk of DISKS) expect(await bitmapNames(q, disk)).toEqual(['cp-1']);
  const reader = await connect({ socketPath: nbdSocket, exportName: views[0]!.exportName });

  await closeViews(q, { viewId: 'snap-1', tempDir });
  await expect(reader.read(0, RECORD)).rejects.toThrow();
  expect(await leftovers(q)).toEqual(NOTHING);
  await expect(fs.access(nbdSocket)).rejects.toThrow();
  await closeViews(q, { viewId: 'snap-1', tempDir });
  expect(await leftovers(q)).toEqual(NOTHING);
});

test('temporary images are sparse: they take space only for what the guest overwrites, and the view keeps the old bytes', async () => {
  const q = qmp!;
  const [w0] = await liveWriters(q);
  await w0!.write(0, Buffer.alloc(4 * CLUSTER, 0xaa));
  const views = await openViews(q, { viewId: 'snap-1', tempDir, nbdSocket, disks: disks(null), newBitmap: 'cp-1' });
  const allocated = async (): Promise<number[]> => {
    const files = (await fs.readdir(tempDir)).sort();
    return Promise.all(files.map(async (file) => (await fs.stat(path.join(tempDir, file))).blocks * 512));
  };
  // qemu-img allocates the first block of a raw image (its alignment probe), nothing more.
  for (const bytes of await allocated()) expect(bytes).toBeLessThan(CLUSTER);
  // The guest overwrites eight clusters of one disk: its image takes their old bytes (the first block among them),
  // the other image nothing.
  await w0!.write(0, Buffer.alloc(8 * CLUSTER, 0xee));
  await w0!.flush();
  const [other, overwritten] = (await allocated()).sort((a, b) => a - b);
  expect(other).toBeLessThan(CLUSTER);
  expect(overwritten).toBe(8 * CLUSTER);
  const expected = Buffer.concat([Buffer.alloc(4 * CLUSTER, 0xaa), Buffer.alloc(DISK_BYTES - 4 * CLUSTER)]);
  expect(sha256(await readView(views.find((view) => view.name === 'vd-disk0')!))).toBe(sha256(expected));
  await closeViews(q, { viewId: 'snap-1', tempDir });
  expect(await fs.readdir(tempDir)).toEqual([]);
});

test('a snapshot cut short by QEMU stopping: after a clean stop abandon gives the parent every write, after a SIGKILL it drops it', async () => {
  let q = qmp!;
  await fullCheckpoint(q, 'snap-1', 'cp-1');
  const [w0] = await liveWriters(q);
  await w0!.write(5 * CLUSTER, Buffer.alloc(RECORD, 1));
  await openViews(q, { viewId: 'snap-2', tempDir, nbdSocket, disks: disks('cp-1'), newBitmap: 'cp-2' });
  await w0!.write(7 * CLUSTER, Buffer.alloc(RECORD, 2));
  // A clean exit saves both bitmaps as they are: the parent's disabled, the new one with the write since.
  await q.close();
  await daemon!.stop();
  q = await start();
  expect(await bitmapsOf(q, 'disk0')).toMatchObject([
    { name: 'cp-1', recording: false },
    { name: 'cp-2', recording: true },
  ]);
  await closeViews(q, { viewId: 'snap-2', tempDir });
  await abandonCheckpoint(q, disks('cp-1'), 'cp-2');
  await expect(inspectCheckpoint(q, 'disk0', 'cp-1')).resolves.toEqual({ usable: true });
  const views = await openViews(q, { viewId: 'snap-3', tempDir, nbdSocket, disks: disks('cp-1'), newBitmap: 'cp-3' });
  expect(await dirtyRanges(views[0]!)).toEqual([
    [5 * CLUSTER, 6 * CLUSTER],
    [7 * CLUSTER, 8 * CLUSTER],
  ]);

  // Killed during the next one: cp-3 was never saved, cp-1 reloads inconsistent; nothing can vouch for the writes.
  await q.close();
  process.kill(daemon!.pid, 'SIGKILL');
  await daemon!.exited;
  q = await start();
  await closeViews(q, { viewId: 'snap-3', tempDir });
  await abandonCheckpoint(q, disks('cp-1'), 'cp-3');
  await abandonCheckpoint(q, disks('cp-1'), 'cp-3');
  for (const disk of DISKS) expect(await bitmapNames(q, disk)).toEqual([]);
  expect(await leftovers(q)).toEqual(NOTHING);
});
