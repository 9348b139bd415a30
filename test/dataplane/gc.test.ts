import { blake3 } from '@napi-rs/blake-hash';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { GcProgress, Manifest } from '../../dataplane';
import {
  ChunkPool,
  LocalRepository,
  ManifestCorruptError,
  ZERO_CHUNK,
  collectGarbage,
  distinctChunks,
  verifyManifest,
} from '../../dataplane';
import { ageChunks } from '../helpers/repository';
import { KiB, capture, makeTempDir, manifestOf } from './helpers';

const CHUNK = 64 * KiB;
const GRACE_MS = 60 * 60 * 1000;
let dir: string;
let pool: ChunkPool;
let text: Buffer;
let repositories = 0;
const BLOCKS = ['onlyA', 'shared1', 'shared2', 'onlyB1', 'onlyB2'] as const;
/** Chunk ids of the blocks. */
let ids: Record<(typeof BLOCKS)[number], string>;
/** Images of snapshots `a` (onlyA shared1 shared2 zero) and `b` (shared1 shared2 onlyB1 onlyB2). */
let imageA: string;
let imageB: string;

beforeAll(async () => {
  dir = await makeTempDir();
  pool = new ChunkPool();
  text = await fs.readFile('/usr/share/common-licenses/GPL-3');
  const blocks = Object.fromEntries(BLOCKS.map((name) => [name, block(name)])) as Record<keyof typeof ids, Buffer>;
  ids = Object.fromEntries(BLOCKS.map((name) => [name, blake3(blocks[name]).toString('hex')])) as typeof ids;
  imageA = path.join(dir, 'a.raw');
  imageB = path.join(dir, 'b.raw');
  await fs.writeFile(imageA, Buffer.concat([blocks.onlyA, blocks.shared1, blocks.shared2, Buffer.alloc(CHUNK)]));
  await fs.writeFile(imageB, Buffer.concat([blocks.shared1, blocks.shared2, blocks.onlyB1, blocks.onlyB2]));
});

afterAll(async () => {
  await pool.destroy();
  await fs.rm(dir, { recursive: true, force: true });
});

/** A chunk of licence text headed by `name`: compressible, and distinct per name. */
function block(name: string): Buffer {
  const bytes = Buffer.alloc(CHUNK);
  let at = bytes.write(`${name}\n`);
  while (at < CHUNK) at += text.copy(bytes, at);
  return bytes;
}

/** A fresh repository holding snapshots `a` and `b`, written `ageMs` ago. */
async function twoSnapshots(ageMs = 2 * GRACE_MS): Promise<{ repository: LocalRepository; a: Manifest }> {
  const repository = new LocalRepository(path.join(dir, `repo-${++repositories}`));
  const { manifest: a } = await capture({ pool, repository, snapshotId: 'a', chunkSize: CHUNK }, { root: imageA });
  await capture({ pool, repository, snapshotId: 'b', chunkSize: CHUNK }, { root: imageB });
  await ageChunks(repository, ageMs);
  return { repository, a };
}

async function storedIds(repository: LocalRepository): Promise<string[]> {
  const stored: string[] = [];
  for await (const chunk of repository.listChunks()) stored.push(chunk.id);
  return stored.sort();
}

async function storedBytes(repository: LocalRepository, chunkIds: string[]): Promise<number> {
  let sum = 0;
  for (const id of chunkIds) sum += await repository.chunkStoredSize(id);
  return sum;
}

test('after one of two manifests is deleted, GC frees exactly its own chunks and the other still verifies', async () => {
  const { repository, a } = await twoSnapshots();
  const bytesFreed = await storedBytes(repository, [ids.onlyB1, ids.onlyB2]);
  await repository.deleteManifest('b');
  const progress: GcProgress[] = [];
  const result = await collectGarbage(repository, { graceMs: GRACE_MS, onProgress: (p) => void progress.push(p) });
  expect(result).toEqual({
    chunksScanned: 5,
    chunksReferenced: 3,
    chunksRemoved: 2,
    bytesFreed,
    chunksKeptByGrace: 0,
  });
  expect(bytesFreed).toBeLessThan(CHUNK); // compressed sizes, not raw
  expect(await storedIds(repository)).toEqual(distinctChunks(a).sort());
  expect(await storedIds(repository)).toEqual([ids.onlyA, ids.shared1, ids.shared2].sort());
  await expect(verifyManifest({ manifest: a, repository, pool })).resolves.toMatchObject({ chunksVerified: 3 });
  expect(progress).toEqual([
    { phase: 'mark', done: 1, total: 1 },
    { phase: 'sweep', done: 0, total: 2 },
    { phase: 'sweep', done: 2, total: 2 },
  ]);
});

test('a manifest GC cannot read, or that does not match its digest, stops it before it deletes anything', async () => {
  const { repository, a } = await twoSnapshots();
  const digest = await repository.writeManifest(a);
  await repository.deleteManifest('b'); // b's own chunks are garbage
  const before = await storedIds(repository);
  const file = path.join(repository.root, 'manifests', 'a.json');
  const original = await fs.readFile(file, 'utf8');

  await fs.writeFile(file, original.replace(`"sizeBytes":`, `"sizeBytes":1`)); // valid, but not what was written
  const altered = await collectGarbage(repository, { graceMs: 0, manifestDigests: new Map([['a', digest]]) }).catch(
    (e: unknown) => e,
  );
  expect(altered).toBeInstanceOf(ManifestCorruptError);
  expect(altered).toMatchObject({ type: 'ManifestCorrupt', snapshotId: 'a' });
  expect((altered as Error).message).toContain('garbage collection of this repository deleted nothing');

  await fs.writeFile(file, original.slice(0, 40)); // truncated: unreadable with or without a digest
  await expect(collectGarbage(repository, { graceMs: 0 })).rejects.toThrow(ManifestCorruptError);
  expect(await storedIds(repository)).toEqual(before);
});

test('GC is idempotent: a second run frees nothing', async () => {
  const { repository } = await twoSnapshots();
  await repository.deleteManifest('b');
  await collectGarbage(repository, { graceMs: GRACE_MS });
  await expect(collectGarbage(repository, { graceMs: GRACE_MS })).resolves.toEqual({
    chunksScanned: 3,
    chunksReferenced: 3,
    chunksRemoved: 0,
    bytesFreed: 0,
    chunksKeptByGrace: 0,
  });
});

test('chunks referenced only by an in-flight snapshot’s journal or by extra roots are kept', async () => {
  const { repository } = await twoSnapshots();
  await repository.deleteManifest('a');
  await repository.deleteManifest('b');
  await repository.appendJournal('in-flight', 'root', [ids.shared1, ZERO_CHUNK]);
  const result = await collectGarbage(repository, { graceMs: GRACE_MS, extraRoots: [ids.onlyB1] });
  expect(result).toMatchObject({ chunksScanned: 5, chunksReferenced: 2, chunksRemoved: 3 });
  expect(await storedIds(repository)).toEqual([ids.shared1, ids.onlyB1].sort());
});

test('unreferenced chunks younger than the grace period are kept, and removed by a later GC', async () => {
  const { repository } = await twoSnapshots(0);
  await repository.deleteManifest('a');
  await repository.deleteManifest('b');
  await expect(collectGarbage(repository, { graceMs: GRACE_MS })).resolves.toMatchObject({
    chunksScanned: 5,
    chunksRemoved: 0,
    chunksKeptByGrace: 5,
  });
  const later = new Date(Date.now() + 2 * GRACE_MS);
  await expect(collectGarbage(repository, { graceMs: GRACE_MS, now: later })).resolves.toMatchObject({
    chunksRemoved: 5,
    chunksKeptByGrace: 0,
  });
  expect(await storedIds(repository)).toEqual([]);
});

test('a chunk reused by storeChunks is touched (with its pack), so the grace period protects it', async () => {
  const repository = new LocalRepository(path.join(dir, `repo-${++repositories}`));
  await capture({ pool, repository, snapshotId: 'a', chunkSize: CHUNK }, { root: imageA });
  await ageChunks(repository, 2 * GRACE_MS);
  const before = Date.now() - 1; // utimes may round a touch down a hair
  const { stored } = await capture({ pool, repository, snapshotId: 'b', chunkSize: CHUNK }, { root: imageB });
  expect(stored.chunksWritten).toBe(2);
  const modified = new Map<string, number>();
  for await (const chunk of repository.listChunks()) modified.set(chunk.id, chunk.modifiedAt.getTime());
  expect(modified.get(ids.shared1)).toBeGreaterThanOrEqual(before);
  expect(modified.get(ids.shared2)).toBeGreaterThanOrEqual(before);
  // onlyA was stored in the same pack as the shared chunks: the touch protects the pack, so it waits as long.
  expect(modified.get(ids.onlyA)).toBeGreaterThanOrEqual(before);

  await repository.deleteManifest('a');
  await repository.deleteManifest('b');
  await expect(collectGarbage(repository, { graceMs: GRACE_MS })).resolves.toMatchObject({
    chunksRemoved: 0,
    chunksKeptByGrace: 5,
  });
  expect(await storedIds(repository)).toHaveLength(5);
  const later = new Date(Date.now() + 2 * GRACE_MS);
  await expect(collectGarbage(repository, { graceMs: GRACE_MS, now: later })).resolves.toMatchObject({
    chunksRemoved: 5,
  });
  expect(await storedIds(repository)).toEqual([]);
});

test('a chunk referenced or reused by a snapshot between the mark and the sweep survives', async () => {
  const { repository } = await twoSnapshots();
  await repository.deleteManifest('a');
  await repository.deleteManifest('b');
  const bytesFreed = await storedBytes(repository, [ids.onlyA, ids.shared1, ids.shared2]);
  const late = manifestOf('late', [{ name: 'root', sizeBytes: CHUNK, chunkSize: CHUNK, chunks: [ids.onlyB1] }]);
  const result = await collectGarbage(repository, {
    graceMs: GRACE_MS,
    onProgress: async (p) => {
      if (p.phase !== 'sweep' || p.done > 0) return;
      expect(p.total).toBe(5); // every chunk is an unreferenced old candidate by now
      await repository.writeManifest(late);
      await repository.touchChunks([ids.onlyB2]); // as storeChunks does when it reuses a chunk
    },
  });
  expect(result).toEqual({
    chunksScanned: 5,
    chunksReferenced: 1,
    chunksRemoved: 3,
    bytesFreed,
    chunksKeptByGrace: 1,
  });
  expect(await storedIds(repository)).toEqual([ids.onlyB1, ids.onlyB2].sort());
  await expect(verifyManifest({ manifest: late, repository, pool })).resolves.toMatchObject({ chunksVerified: 1 });
});
