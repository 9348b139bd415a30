import { blake3 } from '@napi-rs/blake-hash';
import fs from 'node:fs/promises';
import path from 'node:path';
import {
  ChunkCorruptError,
  ChunkMissingError,
  ChunkPool,
  DEFAULT_CHUNK_SIZE,
  DiskChangedError,
  LocalRepository,
  ZERO_CHUNK,
  distinctChunks,
  knownChunks,
  openImageFile,
  restoreDiskFile,
  scanDisk,
  storeChunks,
  verifyManifest,
  withDiskReader,
  withImageFile,
} from '../../dataplane';
import { damageChunk, loseChunk } from '../helpers/repository';
import { KiB, MiB, capture, fileSha256, makeExt4Image, makeTempDir, scanRefs } from './helpers';

const CHUNK = DEFAULT_CHUNK_SIZE;
let dir: string;
let pool: ChunkPool;
/** A 48 MiB ext4 filesystem holding /usr/share/perl (about 21 MiB): real files, and empty (zero) regions. */
let image: string;
let repositories = 0;

beforeAll(async () => {
  dir = await makeTempDir();
  pool = new ChunkPool();
  image = path.join(dir, 'disk.raw');
  await makeExt4Image(image, 48, '/usr/share/perl');
});

afterAll(async () => {
  await pool.destroy();
  await fs.rm(dir, { recursive: true, force: true });
});

function newRepository(): LocalRepository {
  return new LocalRepository(path.join(dir, `repo-${++repositories}`));
}

async function storedChunkIds(repository: LocalRepository): Promise<string[]> {
  const ids: string[] = [];
  for await (const chunk of repository.listChunks()) ids.push(chunk.id);
  return ids;
}

test('a captured ext4 image restores byte-identically, with its zero chunks left as holes', async () => {
  const repository = newRepository();
  const { manifest } = await capture({ pool, repository, snapshotId: 's1', chunkSize: CHUNK }, { root: image });
  const refs = manifest.disks[0]!.chunks;
  expect(refs).toHaveLength((48 * MiB) / CHUNK);
  expect(refs.filter((r) => r === ZERO_CHUNK).length).toBeGreaterThan(refs.length / 4);

  const target = path.join(dir, 'restored.raw');
  const progress: number[] = [];
  await restoreDiskFile({
    manifest,
    diskName: 'root',
    repository,
    pool,
    target,
    onProgress: (p) => progress.push(p.bytesDone),
  });
  expect(await fileSha256(target)).toBe(await fileSha256(image));
  expect(progress.at(-1)).toBe(48 * MiB);
  const restored = await fs.stat(target);
  const dataBytes = refs.filter((r) => r !== ZERO_CHUNK).length * CHUNK;
  expect(restored.size).toBe(48 * MiB);
  expect(restored.blocks * 512).toBeLessThanOrEqual(dataBytes + MiB); // holes where the zero chunks are
  await expect(fs.access(`${target}.partial`)).rejects.toThrow();
});

test('a disk whose size is not a multiple of the chunk size keeps a short last chunk and restores exactly', async () => {
  const odd = path.join(dir, 'odd.raw');
  const head = (await fs.readFile(image)).subarray(0, 3 * CHUNK);
  const tail = (await fs.readFile('/usr/share/common-licenses/GPL-3')).subarray(0, 12345);
  const bytes = Buffer.concat([head, tail]);
  await fs.writeFile(odd, bytes);
  const repository = newRepository();
  const { manifest, stored } = await capture({ pool, repository, snapshotId: 's2', chunkSize: CHUNK }, { root: odd });
  const refs = manifest.disks[0]!.chunks;
  expect(refs).toHaveLength(4);
  expect(refs[3]).toBe(blake3(tail).toString('hex'));
  const distinctFull = new Set(refs.slice(0, 3).filter((r) => r !== ZERO_CHUNK)).size;
  expect(stored).toMatchObject({ chunksWritten: distinctFull + 1, bytesWritten: distinctFull * CHUNK + 12345 });

  const target = path.join(dir, 'odd-restored.raw');
  await restoreDiskFile({ manifest, diskName: 'root', repository, pool, target });
  expect((await fs.readFile(target)).equals(bytes)).toBe(true); // (toEqual on large buffers is very slow)
});

test('an image that differs in a few scattered 4 KiB blocks stores only the chunks those blocks touch', async () => {
  const repository = newRepository();
  await capture({ pool, repository, snapshotId: 'base', chunkSize: CHUNK }, { root: image });
  const changed = path.join(dir, 'changed.raw');
  await fs.copyFile(image, changed);
  const blocks = [5, 6, 1000, 4000, 7000, 11000]; // 4 KiB block numbers; 5 and 6 share a chunk
  const handle = await fs.open(changed, 'r+');
  for (const block of blocks) await handle.write(Buffer.alloc(4 * KiB, `block ${block} `), 0, 4 * KiB, block * 4 * KiB);
  await handle.close();
  const touched = new Set(blocks.map((b) => Math.floor((b * 4 * KiB) / CHUNK))).size;

  const next = await capture({ pool, repository, snapshotId: 'next', chunkSize: CHUNK }, { root: changed });
  expect(touched).toBe(5);
  expect(next.stored.chunksWritten).toBe(touched);
  expect(next.stored.bytesWritten).toBe(touched * CHUNK);

  const target = path.join(dir, 'changed-restored.raw');
  await restoreDiskFile({ manifest: next.manifest, diskName: 'root', repository, pool, target });
  expect(await fileSha256(target)).toBe(await fileSha256(changed));
});

test('identical content in two manifests (and two disks of one) is stored once', async () => {
  const repository = newRepository();
  const copy = path.join(dir, 'copy.raw');
  await fs.copyFile(image, copy);
  const first = await capture({ pool, repository, snapshotId: 'one', chunkSize: CHUNK }, { root: image, data: copy });
  const second = await capture({ pool, repository, snapshotId: 'two', chunkSize: CHUNK }, { root: image });
  const distinct = distinctChunks(first.manifest);
  expect(distinct.length).toBe(new Set(first.manifest.disks[0]!.chunks.filter((r) => r !== ZERO_CHUNK)).size);
  expect(first.stored.chunksWritten).toBe(distinct.length);
  expect(second.stored.chunksWritten).toBe(0);
  expect((await storedChunkIds(repository)).sort()).toEqual([...distinct].sort());
});

test('verifyManifest finds a corrupted chunk (ChunkCorrupt) and then a deleted one (ChunkMissing) by id', async () => {
  const repository = newRepository();
  const { manifest } = await capture({ pool, repository, snapshotId: 's3', chunkSize: CHUNK }, { root: image });
  const ids = distinctChunks(manifest);
  const progress: { index: number; total: number }[] = [];
  await expect(
    verifyManifest({ manifest, repository, pool, onProgress: ({ index, total }) => progress.push({ index, total }) }),
  ).resolves.toEqual({ chunksVerified: ids.length, bytesVerified: ids.length * CHUNK });
  expect(progress.at(-1)).toEqual({ index: ids.length, total: ids.length });

  const victim = ids[Math.floor(ids.length / 2)]!;
  await damageChunk(repository, victim);
  const corrupt = await verifyManifest({ manifest, repository, pool }).catch((e: unknown) => e);
  expect(corrupt).toBeInstanceOf(ChunkCorruptError);
  expect((corrupt as ChunkCorruptError).chunkId).toBe(victim);

  await loseChunk(repository, victim);
  const missing = await verifyManifest({ manifest, repository, pool }).catch((e: unknown) => e);
  expect(missing).toBeInstanceOf(ChunkMissingError);
  expect((missing as ChunkMissingError).chunkId).toBe(victim);

  // Resuming after the victim's place in the stable order no longer meets it.
  const after = ids.indexOf(victim) + 1;
  await expect(verifyManifest({ manifest, repository, pool, fromIndex: after })).resolves.toMatchObject({
    chunksVerified: ids.length - after,
  });
});

test('a restore that fails leaves neither the target nor a partial file', async () => {
  const repository = newRepository();
  const { manifest } = await capture({ pool, repository, snapshotId: 's4', chunkSize: CHUNK }, { root: image });
  await loseChunk(repository, distinctChunks(manifest).at(-1)!);
  const target = path.join(dir, 'failed-restore.raw');
  await expect(restoreDiskFile({ manifest, diskName: 'root', repository, pool, target })).rejects.toThrow(
    ChunkMissingError,
  );
  await expect(fs.access(target)).rejects.toThrow();
  await expect(fs.access(`${target}.partial`)).rejects.toThrow();
});

test('a scan resumed at a chunk hands over exactly the tail of a full scan, in order', async () => {
  const full = await scanRefs(pool, image, CHUNK);
  const starts: number[] = [];
  const { size } = await fs.stat(image);
  const tail: string[] = [];
  await withImageFile(image, (disk) =>
    scanDisk({
      disk,
      sizeBytes: size,
      chunkSize: CHUNK,
      pool,
      fromChunk: 41,
      onChunks: (start, refs) => {
        expect(start).toBe(41 + tail.length);
        starts.push(start);
        tail.push(...refs);
      },
    }),
  );
  expect(tail).toEqual(full.slice(41));
  expect(starts.length).toBeGreaterThan(1);
});

test('a scan reads only the chunks it does not know, and gives the same refs as a full scan', async () => {
  const full = await scanRefs(pool, image, CHUNK);
  const { size } = await fs.stat(image);
  // Data in chunks 3–5 (a range across their edges), 40 and the short tail; the parent's refs for all but chunk 4, 40.
  const data = [
    { offset: 3 * CHUNK + 10, length: 2 * CHUNK },
    { offset: 40 * CHUNK + 4096, length: 4096 },
    { offset: size - 1, length: 1 },
  ];
  const changed = [
    { offset: 4 * CHUNK, length: 1 },
    { offset: 40 * CHUNK, length: CHUNK },
  ];
  // The parent's refs are the real ones, except where the view changed (a stale ref that must not survive).
  const parentChunks = full.map((ref, i) => (i === 4 || i === 40 ? 'f'.repeat(64) : ref));
  const known = knownChunks({ sizeBytes: size, chunkSize: CHUNK, data, incremental: { changed, parentChunks } });
  const reads: { position: number; length: number }[] = [];
  const opened = await openImageFile(image);
  const counting = {
    read: (buffer: Buffer, position: number) => {
      reads.push({ position, length: buffer.length });
      return opened.read(buffer, position);
    },
    close: () => opened.close(),
  };
  const refs: string[] = [];
  let bytesRead = 0;
  await withDiskReader(Promise.resolve(counting), (disk) =>
    scanDisk({
      disk,
      sizeBytes: size,
      chunkSize: CHUNK,
      pool,
      known,
      onChunks: (_, segment, read) => {
        refs.push(...segment);
        bytesRead += read;
      },
    }),
  );
  // Chunks 4 and 40 are read (one read each); everything else comes from the parent or is zero.
  expect(reads).toEqual([
    { position: 4 * CHUNK, length: CHUNK },
    { position: 40 * CHUNK, length: CHUNK },
  ]);
  expect(bytesRead).toBe(2 * CHUNK);
  const expected = full.map((ref, i) => ([3, 4, 5, 40, full.length - 1].includes(i) ? ref : ZERO_CHUNK));
  expect(refs).toEqual(expected);
});

test('without a parent, a scan reads every chunk a data range touches, neighbours in one read', async () => {
  const full = await scanRefs(pool, image, CHUNK);
  const { size } = await fs.stat(image);
  const data = [
    { offset: 2 * CHUNK - 1, length: 2 },
    { offset: 9 * CHUNK, length: 3 * CHUNK },
  ];
  const reads: number[][] = [];
  const opened = await openImageFile(image);
  const counting = {
    read: (buffer: Buffer, position: number) => {
      reads.push([position, buffer.length]);
      return opened.read(buffer, position);
    },
    close: () => opened.close(),
  };
  const refs: string[] = [];
  await withDiskReader(Promise.resolve(counting), (disk) =>
    scanDisk({
      disk,
      sizeBytes: size,
      chunkSize: CHUNK,
      pool,
      known: knownChunks({ sizeBytes: size, chunkSize: CHUNK, data, incremental: null }),
      onChunks: (_, segment) => void refs.push(...segment),
    }),
  );
  expect(reads).toEqual([
    [1 * CHUNK, 2 * CHUNK],
    [9 * CHUNK, 3 * CHUNK],
  ]);
  expect(refs).toEqual(full.map((ref, i) => ([1, 2, 9, 10, 11].includes(i) ? ref : ZERO_CHUNK)));
});

test('an aborted scan stops promptly with the abort reason', async () => {
  const { size } = await fs.stat(image);
  const controller = new AbortController();
  const seen: number[] = [];
  const scan = withImageFile(image, (disk) =>
    scanDisk({
      disk,
      sizeBytes: size,
      chunkSize: CHUNK,
      pool,
      signal: controller.signal,
      onChunks: (start) => {
        seen.push(start);
        controller.abort(new Error('stop now'));
      },
    }),
  );
  await expect(scan).rejects.toThrow('stop now');
  expect(seen).toEqual([0]); // nothing is handed over after the abort
});

test('storeChunks resumed at an index stores only the chunks first referenced from there on', async () => {
  const repository = newRepository();
  const refs = await scanRefs(pool, image, CHUNK);
  const from = Math.floor(refs.length / 2);
  const { size } = await fs.stat(image);
  const progress: number[] = [];
  const stored = await withImageFile(image, (disk) =>
    storeChunks({
      disk,
      chunkSize: CHUNK,
      sizeBytes: size,
      refs,
      repository,
      pool,
      fromIndex: from,
      onProgress: ({ index }) => progress.push(index),
    }),
  );
  const expected = new Set(refs.slice(from).filter((r) => r !== ZERO_CHUNK));
  expect(stored.chunksWritten).toBe(expected.size);
  expect((await storedChunkIds(repository)).sort()).toEqual([...expected].sort());
  expect(progress.at(-1)).toBe(refs.length);
});

test('storeChunks fails with DiskChanged when a chunk changed after the scan, and does not store it', async () => {
  const repository = newRepository();
  const moving = path.join(dir, 'moving.raw');
  await fs.copyFile(image, moving);
  const refs = await scanRefs(pool, moving, CHUNK);
  const index = refs.findIndex((r) => r !== ZERO_CHUNK);
  const handle = await fs.open(moving, 'r+');
  await handle.write(Buffer.from('changed after capture'), 0, 21, index * CHUNK + 100);
  await handle.close();
  const { size } = await fs.stat(moving);
  const error = await withImageFile(moving, (disk) =>
    storeChunks({ disk, chunkSize: CHUNK, sizeBytes: size, refs, repository, pool }),
  ).catch((e: unknown) => e);
  expect(error).toBeInstanceOf(DiskChangedError);
  expect(error).toMatchObject({ expectedId: refs[index], offset: index * CHUNK });
  expect(await repository.hasChunk(refs[index]!)).toBe(false);
});
