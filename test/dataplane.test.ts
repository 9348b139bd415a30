import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { ChunkRef, Manifest } from '../dataplane';
import {
  ChunkCorruptError,
  ChunkMissingError,
  ChunkPool,
  LocalRepository,
  ZERO_CHUNK,
  distinctChunks,
  manifestStats,
  restoreDisk,
  scanDisk,
  storeChunks,
  verifyManifest,
} from '../dataplane';
import { makeExt4Image } from '../platform/local/seed';
import { fileHash } from './helpers/snapshot-env';

const KiB = 1024;
const MiB = 1024 * KiB;
const CHUNK = 256 * KiB;

let dir: string;
let pool: ChunkPool;
let image: string;

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dataplane-'));
  pool = new ChunkPool();
  image = path.join(dir, 'disk.raw');
  await makeExt4Image(image, 32 * MiB, '/usr/share/perl', 'test');
});

afterAll(async () => {
  await pool.destroy();
  await fs.rm(dir, { recursive: true, force: true });
});

async function scan(file: string, fromChunk = 0): Promise<ChunkRef[]> {
  const { size } = await fs.stat(file);
  const refs: ChunkRef[] = [];
  await scanDisk({
    path: file,
    sizeBytes: size,
    chunkSize: CHUNK,
    pool,
    fromChunk,
    onChunks: (_, r) => void refs.push(...r),
  });
  return refs;
}

/** Captures a file into a repository the way the snapshot stages do, and returns its manifest. */
async function capture(repository: LocalRepository, file: string, snapshotId: string) {
  const { size } = await fs.stat(file);
  const refs = await scan(file);
  const stored = await storeChunks({ path: file, chunkSize: CHUNK, sizeBytes: size, refs, repository, pool });
  const manifest: Manifest = {
    version: 1,
    snapshotId,
    accountId: 'a',
    vmId: 'vm',
    region: 'US-1',
    parentSnapshotId: null,
    createdAt: new Date().toISOString(),
    vmConfig: {},
    disks: [{ name: 'root', sizeBytes: size, chunkSize: CHUNK, chunks: refs }],
  };
  await repository.writeManifest(manifest);
  return { manifest, stored };
}

function chunkFile(repository: LocalRepository, id: string): string {
  return path.join(repository.root, 'chunks', id.slice(0, 2), `${id}.zst`);
}

test('a captured ext4 image restores byte-identically, with zero chunks left as holes', async () => {
  const repository = new LocalRepository(path.join(dir, 'repo-restore'));
  const { manifest } = await capture(repository, image, 'snap-1');
  expect(manifest.disks[0]!.chunks).toContain(ZERO_CHUNK);
  const target = path.join(dir, 'restored.raw');
  await restoreDisk({ manifest, diskName: 'root', repository, pool, target });
  expect(await fileHash(target)).toBe(await fileHash(image));
  const restored = await fs.stat(target);
  expect(restored.blocks * 512).toBeLessThan(restored.size);
  await expect(fs.access(`${target}.partial`)).rejects.toThrow();
});

test('a disk whose size is not a multiple of the chunk size keeps its short last chunk', async () => {
  const odd = path.join(dir, 'odd.raw');
  const bytes = (await fs.readFile(image)).subarray(0, 3 * CHUNK + 12345);
  await fs.writeFile(odd, bytes);
  const repository = new LocalRepository(path.join(dir, 'repo-odd'));
  const { manifest } = await capture(repository, odd, 'snap-odd');
  expect(manifest.disks[0]!.chunks).toHaveLength(4);
  const target = path.join(dir, 'odd-restored.raw');
  await restoreDisk({ manifest, diskName: 'root', repository, pool, target });
  expect(await fs.readFile(target)).toEqual(bytes);
});

test('changing a few scattered blocks stores only the chunks they touch', async () => {
  const repository = new LocalRepository(path.join(dir, 'repo-incremental'));
  await capture(repository, image, 'base');
  const changed = path.join(dir, 'changed.raw');
  await fs.copyFile(image, changed);
  const blocks = [5, 6, 1000, 4000, 7000]; // 4 KiB blocks: 5 and 6 share a chunk
  const handle = await fs.open(changed, 'r+');
  for (const block of blocks) await handle.write(Buffer.alloc(4 * KiB, `block ${block}`), 0, 4 * KiB, block * 4 * KiB);
  await handle.close();
  const touched = new Set(blocks.map((b) => Math.floor((b * 4 * KiB) / CHUNK))).size;
  const { stored } = await capture(repository, changed, 'next');
  expect(stored.chunksWritten).toBe(touched);
});

test('identical content in two snapshots is stored once', async () => {
  const repository = new LocalRepository(path.join(dir, 'repo-dedup'));
  const first = await capture(repository, image, 'one');
  const second = await capture(repository, image, 'two');
  expect(first.stored.chunksWritten).toBe(distinctChunks(first.manifest).length);
  expect(second.stored.chunksWritten).toBe(0);
});

test('verification finds a corrupted chunk and a missing chunk by id', async () => {
  const repository = new LocalRepository(path.join(dir, 'repo-verify'));
  const { manifest } = await capture(repository, image, 'snap-v');
  await expect(verifyManifest({ manifest, repository, pool })).resolves.toMatchObject({
    chunksVerified: distinctChunks(manifest).length,
  });
  const victim = distinctChunks(manifest)[0];
  const file = chunkFile(repository, victim!);
  const frame = await fs.readFile(file);
  frame[frame.length - 10]! ^= 0x01;
  await fs.writeFile(file, frame);
  const corrupt = await verifyManifest({ manifest, repository, pool }).catch((e: unknown) => e);
  expect(corrupt).toBeInstanceOf(ChunkCorruptError);
  expect((corrupt as ChunkCorruptError).chunkId).toBe(victim);

  await repository.deleteChunk(victim!);
  const missing = await verifyManifest({ manifest, repository, pool }).catch((e: unknown) => e);
  expect(missing).toBeInstanceOf(ChunkMissingError);
  expect((missing as ChunkMissingError).chunkId).toBe(victim);
});

test('a scan resumed at a chunk gives the tail of a full scan, and an aborted scan stops', async () => {
  const full = await scan(image);
  expect(await scan(image, 40)).toEqual(full.slice(40));
  const { size } = await fs.stat(image);
  const controller = new AbortController();
  const seen: number[] = [];
  const aborted = scanDisk({
    path: image,
    sizeBytes: size,
    chunkSize: CHUNK,
    pool,
    signal: controller.signal,
    onChunks: (start) => {
      seen.push(start);
      controller.abort(new Error('stop'));
    },
  });
  await expect(aborted).rejects.toThrow('stop');
  expect(seen.length).toBeLessThan(full.length / 16);
});

test('journals append, read back and truncate; chunk writes are idempotent and leave no temp files', async () => {
  const repository = new LocalRepository(path.join(dir, 'repo-journal'));
  const refs = (await scan(image)).slice(0, 20);
  await repository.appendJournal('s', 'root', refs.slice(0, 12));
  await repository.appendJournal('s', 'root', refs.slice(12));
  expect(await repository.readJournal('s', 'root')).toEqual(refs);
  await repository.truncateJournal('s', 'root', 7);
  expect(await repository.readJournal('s', 'root')).toEqual(refs.slice(0, 7));
  expect(await repository.listJournals('s')).toEqual(['root']);
  await repository.dropStaging('s');
  expect(await repository.readJournal('s', 'root')).toEqual([]);

  const data = Buffer.alloc(CHUNK, 'x');
  const id = (await pool.hashSegment(Buffer.from(data), CHUNK))[0]!;
  const [frame] = await pool.compressChunks([{ data: Buffer.from(data), id }]);
  expect(await repository.putChunk(id, frame!)).toBe(true);
  expect(await repository.putChunk(id, frame!)).toBe(false);
  expect(await fs.readdir(path.join(repository.root, 'tmp'))).toEqual([]);
  expect(await pool.openChunks([{ frame: await repository.getChunk(id), id }])).toEqual([data]);
});

test('snapshot statistics add up', async () => {
  const repository = new LocalRepository(path.join(dir, 'repo-stats'));
  const { manifest } = await capture(repository, image, 'snap-s');
  const stats = await manifestStats(manifest, repository);
  const refs = manifest.disks[0]!.chunks;
  expect(stats.logicalBytes).toBe(32 * MiB);
  expect(stats.zeroBytes).toBe(refs.filter((r) => r === ZERO_CHUNK).length * CHUNK);
  expect(stats.distinctChunks).toBe(new Set(refs.filter((r) => r !== ZERO_CHUNK)).size);
  expect(stats.distinctRawBytes).toBe(stats.distinctChunks * CHUNK);
  let stored = 0;
  for (const id of distinctChunks(manifest)) stored += (await fs.stat(chunkFile(repository, id))).size;
  expect(stats.storedBytes).toBe(stored);
  expect(stats.compressionRatio).toBeCloseTo(stats.distinctRawBytes / stored);
  expect(stats.dedupRatio).toBeGreaterThanOrEqual(1);
});
