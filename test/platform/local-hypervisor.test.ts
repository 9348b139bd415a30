import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DEFAULT_CHUNK_SIZE } from '../../dataplane';
import type { Range } from '../../dataplane';
import type { Vm } from '../../domain/model';
import { LocalHypervisor, writeGuestBlocks } from '../../platform/local';
import type { DiskView } from '../../platform/ports';
import type { SnapshotWorkflowResult } from '../../workflows/snapshot';
import { createSnapshotEnv, fileHash, waitFor } from '../helpers/snapshot-env';
import type { SnapshotEnv } from '../helpers/snapshot-env';
import { DEFAULT_HOST_ID } from '../../domain/model';

/** 1 MiB and a bit: the last 64 KiB copy-before-write block is a short one. */
const DISK_BYTES = 1024 * 1024 + 1000;
/** A lease longer than any test here, for the tests about something else than its expiry. */
const LEASE = { leaseMs: 60_000 };

let root: string;
let hypervisor: LocalHypervisor;
let vm: Vm;
let original: Buffer;

beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'snap-hypervisor-'));
  hypervisor = new LocalHypervisor(root);
  // Real bytes no one here wrote: a system text file, repeated.
  const text = await fs.readFile('/usr/share/common-licenses/GPL-3');
  original = Buffer.alloc(DISK_BYTES);
  for (let at = 0; at < DISK_BYTES; at += text.length) text.copy(original, at);
  const disk = path.join(root, 'disks', 'vm-1', 'root.raw');
  await fs.mkdir(path.dirname(disk), { recursive: true });
  await fs.writeFile(disk, original);
  vm = {
    id: 'vm-1',
    hostId: DEFAULT_HOST_ID,
    accountId: 'acct',
    name: 'one',
    region: 'CANADA-1',
    flavor: 'H100-SXM5-80GB',
    status: 'ACTIVE',
    config: {},
    disks: [{ name: 'root', path: disk, sizeBytes: DISK_BYTES }],
    labels: [],
  };
});

afterEach(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

async function openView(viewId: string): Promise<DiskView> {
  await hypervisor.freeze(vm, LEASE);
  try {
    const [view] = await hypervisor.openViews(vm, viewId);
    return view!;
  } finally {
    await hypervisor.thaw(vm);
  }
}

/** The whole view, read in pieces of `piece` bytes (not aligned to anything, to cross block edges). */
async function readWhole(view: DiskView, piece = 100_003): Promise<Buffer> {
  const reader = await hypervisor.readView(view);
  try {
    const out = Buffer.alloc(view.sizeBytes);
    for (let at = 0; at < out.length; at += piece) await reader.read(out.subarray(at, at + piece), at);
    return out;
  } finally {
    await reader.close();
  }
}

/** Guest writes in the middle of a block, across two blocks, in the short last block, and twice to one block. */
function writesTagged(tag: string): { offset: number; data: Buffer }[] {
  return [
    { offset: 5000, data: Buffer.alloc(4096, `${tag} a `) },
    { offset: 3 * 65536 - 100, data: Buffer.alloc(300, `${tag} b `) },
    { offset: DISK_BYTES - 500, data: Buffer.alloc(500, `${tag} c `) },
    { offset: 7000, data: Buffer.alloc(10, `${tag} d `) },
  ];
}

function applied(base: Buffer, writes: { offset: number; data: Buffer }[]): Buffer {
  const out = Buffer.from(base);
  for (const { offset, data } of writes) data.copy(out, offset);
  return out;
}

test('a view shows the disk as it was when opened, whatever the guest writes after; the disk has the writes', async () => {
  const view = await openView('snap-1');
  const reader = await hypervisor.readView(view);
  const firstHalf = Buffer.alloc(DISK_BYTES / 2);
  await reader.read(firstHalf, 0);

  const first = writesTagged('one');
  await writeGuestBlocks(hypervisor, vm, 'root', first);
  const second = writesTagged('two'); // the same blocks again: what the view holds must stay the original
  await writeGuestBlocks(hypervisor, vm, 'root', second);

  // A reader opened before the writes reads the rest as it was, too.
  const secondHalf = Buffer.alloc(DISK_BYTES - firstHalf.length);
  await reader.read(secondHalf, firstHalf.length);
  await reader.close();
  expect(Buffer.concat([firstHalf, secondHalf]).equals(original)).toBe(true);
  expect((await readWhole(view)).equals(original)).toBe(true);
  expect((await readWhole(view, 65536)).equals(original)).toBe(true);
  expect((await fs.readFile(vm.disks[0]!.path)).equals(applied(applied(original, first), second))).toBe(true);
});

test('reads interleaved with guest writes all over the disk always see the moment of the view', async () => {
  const view = await openView('snap-race');
  const reader = await hypervisor.readView(view);
  let writing = true;
  // The guest keeps overwriting blocks all over the disk while readers read ranges all over it.
  const guest = (async () => {
    for (let round = 0; round < 40; round++) {
      const offset = ((round * 7919) % 16) * 65536 + ((round * 104729) % 60000);
      await writeGuestBlocks(hypervisor, vm, 'root', [{ offset, data: Buffer.alloc(3000, `round ${round} `) }]);
    }
    writing = false;
  })();
  const mismatches: number[] = [];
  const readers = Array.from({ length: 4 }, async (_, r) => {
    for (let i = 0; writing || i < 3; i++) {
      const position = ((i * 131071 + r * 65537) % (DISK_BYTES - 200_000)) | 0;
      const piece = Buffer.alloc(200_000);
      await reader.read(piece, position);
      if (!piece.equals(original.subarray(position, position + piece.length))) mismatches.push(position);
    }
  });
  await Promise.all([guest, ...readers]);
  await reader.close();
  expect(mismatches).toEqual([]);
  expect((await fs.readFile(vm.disks[0]!.path)).equals(original)).toBe(false);
});

test('views opened at different times each keep their own moment; a released view is gone and costs nothing', async () => {
  const early = await openView('snap-early');
  const first = writesTagged('one');
  await writeGuestBlocks(hypervisor, vm, 'root', first);
  const late = await openView('snap-late');
  const second = writesTagged('two');
  await writeGuestBlocks(hypervisor, vm, 'root', second);

  expect((await readWhole(early)).equals(original)).toBe(true);
  expect((await readWhole(late)).equals(applied(original, first))).toBe(true);

  await hypervisor.releaseViews('snap-early');
  await expect(fs.access(path.join(root, 'views', 'snap-early'))).rejects.toThrow();
  await expect(hypervisor.readView(early)).rejects.toThrow(/not open/);
  await writeGuestBlocks(hypervisor, vm, 'root', [{ offset: 900_000, data: Buffer.alloc(100, 'three') }]);
  expect((await readWhole(late)).equals(applied(original, first))).toBe(true);
  // The late view preserved each block the guest overwrote while it was open once: the four blocks of the second
  // round of writes (blocks 0, 2, 3 and the last) and block 13 of the third.
  expect((await fs.stat(path.join(root, 'views', 'snap-late', 'root.map'))).size).toBe(5 * 4);
  await hypervisor.releaseViews('snap-late');
  await expect(fs.readdir(path.join(root, 'views'))).resolves.toEqual([]);
});

test('views are opened only while the VM is frozen, and reopening a complete view keeps what it preserved', async () => {
  await expect(hypervisor.openViews(vm, 'snap-1')).rejects.toThrow(/must be frozen/);
  const view = await openView('snap-1');
  await writeGuestBlocks(hypervisor, vm, 'root', writesTagged('one'));
  // A retried initiation opens the same views again: they still show the first moment.
  const [again] = await hypervisor.openViews(vm, 'snap-1');
  expect(again).toEqual(view);
  expect((await readWhole(again!)).equals(original)).toBe(true);
});

test('guest writes wait while the VM is frozen, and a freeze waits for a guest write in progress', async () => {
  await hypervisor.freeze(vm, LEASE);
  const write = writeGuestBlocks(hypervisor, vm, 'root', [{ offset: 0, data: Buffer.from('written after thaw') }]);
  await new Promise((resolve) => setTimeout(resolve, 200));
  expect((await fs.readFile(vm.disks[0]!.path)).subarray(0, 18).equals(original.subarray(0, 18))).toBe(true);
  await hypervisor.thaw(vm);
  await write;
  expect((await fs.readFile(vm.disks[0]!.path)).subarray(0, 18).toString()).toBe('written after thaw');

  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const inProgress = hypervisor.guestWrite(vm, vm.disks[0]!, [], () => gate, 1000);
  await new Promise((resolve) => setTimeout(resolve, 50));
  let frozen = false;
  const freeze = hypervisor.freeze(vm, LEASE).then(() => (frozen = true));
  await new Promise((resolve) => setTimeout(resolve, 200));
  expect(frozen).toBe(false);
  release();
  await inProgress;
  await freeze;
  expect(frozen).toBe(true);
  await hypervisor.thaw(vm);
});

test('a guest write lock left behind by a process that is gone does not block a freeze', async () => {
  const gone = spawnSync(process.execPath, ['-e', 'process.pid']).pid;
  await fs.mkdir(path.join(root, 'locks'), { recursive: true });
  await fs.writeFile(path.join(root, 'locks', vm.id), `guest ${gone}`);
  await hypervisor.freeze(vm, LEASE);
  await hypervisor.thaw(vm);
  await expect(fs.access(path.join(root, 'locks', vm.id))).rejects.toThrow();
});

test('a freeze lease that nobody renews expires by itself: guest writes pass again and the lease cannot be renewed', async () => {
  await hypervisor.freeze(vm, { leaseMs: 60_000 });
  // A retried initiation freezes again: the lease restarts, here shorter.
  await hypervisor.freeze(vm, { leaseMs: 400 });
  await hypervisor.renewFreeze(vm, { leaseMs: 400 });
  expect(await hypervisor.isFrozen(vm)).toBe(true);
  // The write waits for the lease to run out, then goes through without any thaw.
  await writeGuestBlocks(hypervisor, vm, 'root', [{ offset: 0, data: Buffer.from('written after expiry') }]);
  expect((await fs.readFile(vm.disks[0]!.path)).subarray(0, 20).toString()).toBe('written after expiry');
  expect(await hypervisor.isFrozen(vm)).toBe(false);
  await expect(hypervisor.renewFreeze(vm, { leaseMs: 400 })).rejects.toThrow(
    'the VM is no longer frozen (it was thawed): freeze it again',
  );
  await expect(hypervisor.openViews(vm, 'snap-late')).rejects.toThrow('VM one must be frozen to open views');
});

test('renewing a freeze whose lease expired fails, though no guest write broke it yet', async () => {
  await hypervisor.freeze(vm, { leaseMs: 50 });
  await waitFor(async () => ((await hypervisor.isFrozen(vm)) ? undefined : true));
  await expect(hypervisor.renewFreeze(vm, { leaseMs: 50 })).rejects.toThrow(
    'the VM is no longer frozen (its freeze lease expired): freeze it again',
  );
  await hypervisor.thaw(vm);
  await expect(fs.access(path.join(root, 'locks', vm.id))).rejects.toThrow();
});

const MiB = 1024 * 1024;
const SPARSE_BYTES = 32 * MiB;
/** What the sparse disk holds (random bytes, so no chunk is zero or a duplicate), the rest being holes. */
const SPARSE_DATA: Range[] = [
  { offset: 100 * 4096, length: 4096 },
  { offset: 10 * MiB, length: MiB },
  { offset: SPARSE_BYTES - 4096, length: 4096 },
];

/** A sparse raw disk holding SPARSE_DATA; returns its content. */
async function makeSparseDisk(file: string): Promise<Buffer> {
  await fs.mkdir(path.dirname(file), { recursive: true });
  const content = Buffer.alloc(SPARSE_BYTES);
  const handle = await fs.open(file, 'w');
  try {
    await handle.truncate(SPARSE_BYTES);
    for (const { offset, length } of SPARSE_DATA) {
      const data = randomBytes(length);
      data.copy(content, offset);
      await handle.write(data, 0, length, offset);
    }
  } finally {
    await handle.close();
  }
  return content;
}

/** Bytes of the chunks that `ranges` touch. */
function touchedChunkBytes(ranges: Range[]): number {
  const chunks = new Set<number>();
  for (const { offset, length } of ranges) {
    for (let c = Math.floor(offset / DEFAULT_CHUNK_SIZE); c * DEFAULT_CHUNK_SIZE < offset + length; c++) chunks.add(c);
  }
  return chunks.size * DEFAULT_CHUNK_SIZE;
}

test('a view of a sparse disk reports its allocated ranges as data, covering every non-zero byte it shows', async () => {
  const file = path.join(root, 'disks', 'vm-sparse', 'root.raw');
  const content = await makeSparseDisk(file);
  vm = { ...vm, id: 'vm-sparse', disks: [{ name: 'root', path: file, sizeBytes: SPARSE_BYTES }] };
  const view = await openView('snap-sparse');
  // After the view opened, the guest writes into a hole and over data: the view keeps showing zeros and the old data.
  const hole = { offset: 20 * MiB, data: Buffer.alloc(4096, 'new data in a hole ') };
  await writeGuestBlocks(hypervisor, vm, 'root', [hole, { offset: 10 * MiB + 5, data: Buffer.alloc(100, 'over') }]);
  const ranges = await hypervisor.viewRanges(view);
  expect(ranges.changed).toBeNull();
  expect(ranges.readWholeReason).toBe('the embedded driver does not track guest writes');
  // The allocated extents: the data, and the block the guest allocated since (conservative: the view reads zeros).
  expect(ranges.data).toEqual([...SPARSE_DATA.slice(0, 2), { offset: 20 * MiB, length: 4096 }, SPARSE_DATA[2]]);
  const shown = await readWhole(view, 4 * MiB);
  expect(shown.equals(content)).toBe(true);
  await hypervisor.releaseViews('snap-sparse');
});

describe('capture of a sparse disk through the snapshot workflow', () => {
  let env: SnapshotEnv;

  beforeAll(async () => {
    env = await createSnapshotEnv();
    await env.startWorker();
  });

  afterAll(async () => {
    await env.close();
  });

  test('reads only the chunks its data touches, and restores byte-identically', async () => {
    const seeded = env.platform.catalog.getVm('vm-trainer-01')!;
    const file = path.join(env.platform.dataDir, 'disks', 'vm-sparse-01', 'root.raw');
    const content = await makeSparseDisk(file);
    const sparse: Vm = {
      ...seeded,
      id: 'vm-sparse-01',
      name: 'sparse-01',
      disks: [{ name: 'root', path: file, sizeBytes: SPARSE_BYTES }],
    };
    env.platform.catalog.putVm(sparse);
    const snapshot = async (name: string) => {
      const started = await env.snapshots.createSnapshot({
        accountId: sparse.accountId,
        vmId: sparse.id,
        region: sparse.region,
        name,
        createAsImage: false,
      });
      const result = (await env.client.workflow.getHandle(started.workflowId).result()) as SnapshotWorkflowResult;
      if (result.status !== 'SUCCESS') throw new Error(`snapshot ${name} ended ${result.status}`);
      return result;
    };
    const restoredHash = async (snapshotId: string) => {
      const target = path.join(env.platform.dataDir, `restored-${snapshotId}.raw`);
      await env.snapshots.restoreDisk({
        accountId: sparse.accountId,
        snapshotId,
        diskName: 'root',
        targetPath: target,
      });
      return fileHash(target);
    };

    const full = await snapshot('sparse-full');
    expect(full.captureBytesRead).toBe(touchedChunkBytes(SPARSE_DATA));
    expect(full.logicalBytes).toBe(SPARSE_BYTES);
    const contentPath = path.join(env.platform.dataDir, 'expected.raw');
    await fs.writeFile(contentPath, content);
    expect(await restoredHash(full.snapshotId)).toBe(await fileHash(contentPath));

    // A write into a hole makes one more chunk data; the embedded driver tracks no writes, so it reads all the data.
    const write = { offset: 20 * MiB, data: randomBytes(4096) };
    await writeGuestBlocks(env.platform.hypervisor, sparse, 'root', [write]);
    write.data.copy(content, write.offset);
    const next = await snapshot('sparse-next');
    expect(next.captureBytesRead).toBe(touchedChunkBytes([...SPARSE_DATA, { offset: write.offset, length: 4096 }]));
    await fs.writeFile(contentPath, content);
    expect(await restoredHash(next.snapshotId)).toBe(await fileHash(contentPath));
  }, 240_000);
});
