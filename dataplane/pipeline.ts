import fs from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import type { ChunkRef, Manifest } from './manifest';
import { ZERO_CHUNK, chunkLength, distinctChunks } from './manifest';
import type { ChunkPool } from './pool';
import type { Repository } from './repository';

/** Bytes read per task sent to the pool: large enough to amortise messaging, small enough to bound memory. */
const SEGMENT_BYTES = 4 * 1024 * 1024;
/** Tasks in flight per pool thread: one working, one queued, so no thread waits for the reader. */
const IN_FLIGHT_PER_THREAD = 2;
/** Compressed batches waiting for their chunk files to be written: enough to keep the disk busy, bounded in memory. */
const WRITE_BATCHES_AHEAD = 4;
/** Stored chunks opened (decompressed and re-hashed) per pool task when verifying or restoring. */
const CHUNKS_PER_OPEN_TASK = 16;

/**
 * Runs `work` on items from `source` with at most `limit` in flight and hands results to `sink` in source order.
 * Memory stays bounded by `limit` items whatever the source's size.
 */
async function orderedPipeline<T, R>(
  source: AsyncIterable<T>,
  limit: number,
  work: (item: T) => Promise<R>,
  sink: (result: R, item: T) => Promise<void> | void,
): Promise<void> {
  const inFlight: { item: T; result: Promise<R> }[] = [];
  const drainOne = async () => {
    const head = inFlight.shift()!;
    await sink(await head.result, head.item);
  };
  try {
    for await (const item of source) {
      const result = work(item);
      result.catch(() => undefined); // observed by drainOne; avoids an unhandled rejection while queued
      inFlight.push({ item, result });
      if (inFlight.length >= limit) await drainOne();
    }
    while (inFlight.length > 0) await drainOne();
  } finally {
    await Promise.allSettled(inFlight.map((f) => f.result));
  }
}

/** Groups items into arrays of up to `size`, so one pool task handles many chunks. */
async function* inBatches<T>(items: AsyncIterable<T>, size: number): AsyncGenerator<T[]> {
  let batch: T[] = [];
  for await (const item of items) {
    batch.push(item);
    if (batch.length >= size) {
      yield batch;
      batch = [];
    }
  }
  if (batch.length > 0) yield batch;
}

async function readExactly(handle: FileHandle, length: number, position: number): Promise<Buffer> {
  // allocUnsafeSlow: the buffer owns its memory, so it can be transferred to a worker thread without a copy.
  const buffer = Buffer.allocUnsafeSlow(length);
  let filled = 0;
  while (filled < length) {
    const { bytesRead } = await handle.read(buffer, filled, length - filled, position + filled);
    if (bytesRead === 0) throw new Error(`unexpected end of file at ${position + filled}`);
    filled += bytesRead;
  }
  return buffer;
}

async function writeExactly(handle: FileHandle, data: Buffer, position: number): Promise<void> {
  let written = 0;
  while (written < data.length) {
    const { bytesWritten } = await handle.write(data, written, data.length - written, position + written);
    written += bytesWritten;
  }
}

async function withFile<T>(file: string, flags: string, use: (handle: FileHandle) => Promise<T>): Promise<T> {
  const handle = await fs.open(file, flags);
  try {
    return await use(handle);
  } finally {
    await handle.close();
  }
}

/**
 * Stage "capture": reads a disk image from chunk `fromChunk` on, hashes every chunk on the pool, and hands the
 * ordered refs to `onChunks` segment by segment (the caller journals and heartbeats them).
 */
export async function scanDisk(o: {
  path: string;
  sizeBytes: number;
  chunkSize: number;
  pool: ChunkPool;
  fromChunk?: number;
  signal?: AbortSignal;
  onChunks: (startIndex: number, refs: ChunkRef[]) => Promise<void> | void;
}): Promise<void> {
  const chunksPerSegment = Math.max(1, Math.floor(SEGMENT_BYTES / o.chunkSize));
  const totalChunks = Math.ceil(o.sizeBytes / o.chunkSize);
  await withFile(o.path, 'r', async (handle) => {
    async function* segments() {
      for (let index = o.fromChunk ?? 0; index < totalChunks; index += chunksPerSegment) {
        o.signal?.throwIfAborted();
        const start = index * o.chunkSize;
        const length = Math.min(chunksPerSegment * o.chunkSize, o.sizeBytes - start);
        yield { index, data: await readExactly(handle, length, start) };
      }
    }
    await orderedPipeline(
      segments(),
      o.pool.threads * IN_FLIGHT_PER_THREAD,
      (segment) => o.pool.hashSegment(segment.data, o.chunkSize),
      (refs, segment) => o.onChunks(segment.index, refs),
    );
  });
  o.signal?.throwIfAborted();
}

/**
 * Stage "compress": stores every distinct non-zero chunk of `refs` (from index `fromIndex` on) that the repository
 * lacks, reading it from `path`, re-hashing it (DiskChangedError if the view changed since capture) and compressing it
 * on the pool. Idempotent: what is already stored is skipped (and touched, see collectGarbage).
 */
export async function storeChunks(o: {
  path: string;
  chunkSize: number;
  sizeBytes: number;
  refs: ChunkRef[];
  repository: Repository;
  pool: ChunkPool;
  fromIndex?: number;
  signal?: AbortSignal;
  onProgress?: (p: { index: number; bytesDone: number }) => void;
}): Promise<{ chunksWritten: number; bytesWritten: number; storedBytesWritten: number }> {
  const disk = { sizeBytes: o.sizeBytes, chunkSize: o.chunkSize };
  const chunksPerBatch = Math.max(1, Math.floor(SEGMENT_BYTES / o.chunkSize));
  const stats = { chunksWritten: 0, bytesWritten: 0, storedBytesWritten: 0 };
  const queued = new Set<string>();
  const writeChunk = async (chunk: { index: number; id: string }, frame: Buffer) => {
    if (await o.repository.putChunk(chunk.id, frame)) {
      stats.chunksWritten++;
      stats.bytesWritten += chunkLength(disk, chunk.index);
      stats.storedBytesWritten += frame.length;
    }
  };
  await withFile(o.path, 'r', async (handle) => {
    /** Batches of chunks to store; `end` is the ref index the batch covers up to (for progress). */
    async function* batches() {
      let batch: { index: number; id: string; offset: number; data: Buffer }[] = [];
      for (let index = o.fromIndex ?? 0; index < o.refs.length; index++) {
        o.signal?.throwIfAborted();
        const id = o.refs[index]!;
        // A stored chunk is reused, and touched so that a concurrent garbage collection keeps it.
        if (id !== ZERO_CHUNK && !queued.has(id) && !(await o.repository.touchChunk(id))) {
          queued.add(id);
          const offset = index * o.chunkSize;
          batch.push({ index, id, offset, data: await readExactly(handle, chunkLength(disk, index), offset) });
        }
        if (batch.length >= chunksPerBatch || (index + 1) % (chunksPerBatch * 16) === 0) {
          yield { chunks: batch, end: index + 1 };
          batch = [];
        }
      }
      yield { chunks: batch, end: o.refs.length };
    }
    // Writes run behind compression, in batch order, at most WRITE_BATCHES_AHEAD batches deep. Progress is reported
    // only once a batch is durable, because a retry resumes after the last reported index.
    let writes: Promise<void> = Promise.resolve();
    let writesPending = 0;
    try {
      await orderedPipeline(
        batches(),
        o.pool.threads * IN_FLIGHT_PER_THREAD,
        (batch) => o.pool.compressChunks(batch.chunks),
        async (frames, batch) => {
          if (writesPending >= WRITE_BATCHES_AHEAD) await writes;
          writesPending++;
          writes = writes
            .then(async () => {
              await Promise.all(batch.chunks.map((chunk, i) => writeChunk(chunk, frames[i]!)));
              o.onProgress?.({ index: batch.end, bytesDone: Math.min(batch.end * o.chunkSize, o.sizeBytes) });
            })
            .finally(() => writesPending--);
          writes.catch(() => undefined); // surfaced by the next await of `writes`
        },
      );
    } finally {
      await writes.catch(() => undefined); // never leave writes running behind a failure
    }
    await writes;
  });
  return stats;
}

/** Raw length of every distinct chunk of a manifest (needed for byte counts; the last chunk of a disk is short). */
function distinctChunkLengths(manifest: Manifest): Map<string, number> {
  const lengths = new Map<string, number>();
  for (const disk of manifest.disks) {
    disk.chunks.forEach((ref, index) => {
      if (ref !== ZERO_CHUNK && !lengths.has(ref)) lengths.set(ref, chunkLength(disk, index));
    });
  }
  return lengths;
}

/**
 * Stage "verify": reads back every distinct chunk the manifest references, decompresses it (zstd frame checksum)
 * and re-hashes it. Throws ChunkMissingError or ChunkCorruptError for the first bad chunk. `index` counts distinct
 * chunks in `distinctChunks` order; bytes are raw (uncompressed) bytes.
 */
export async function verifyManifest(o: {
  manifest: Manifest;
  repository: Repository;
  pool: ChunkPool;
  fromIndex?: number;
  signal?: AbortSignal;
  onProgress?: (p: { index: number; total: number; bytesDone: number; bytesTotal: number }) => void;
}): Promise<{ chunksVerified: number; bytesVerified: number }> {
  const ids = distinctChunks(o.manifest);
  const lengths = distinctChunkLengths(o.manifest);
  const bytesTotal = [...lengths.values()].reduce((a, b) => a + b, 0);
  let bytesDone = ids.slice(0, o.fromIndex ?? 0).reduce((sum, id) => sum + lengths.get(id)!, 0);
  let verified = 0;
  async function* frames() {
    for (let index = o.fromIndex ?? 0; index < ids.length; index++) {
      o.signal?.throwIfAborted();
      const id = ids[index]!;
      yield { index, id, frame: await o.repository.getChunk(id) };
    }
  }
  await orderedPipeline(
    inBatches(frames(), CHUNKS_PER_OPEN_TASK),
    o.pool.threads * IN_FLIGHT_PER_THREAD,
    (batch) => o.pool.openChunks(batch),
    (chunks, batch) => {
      verified += chunks.length;
      bytesDone += chunks.reduce((sum, data) => sum + data.length, 0);
      o.onProgress?.({ index: batch.at(-1)!.index + 1, total: ids.length, bytesDone, bytesTotal });
    },
  );
  return { chunksVerified: verified, bytesVerified: bytesDone };
}

/**
 * Restores one disk to a raw image file byte-identical to the source at capture time. Zero chunks stay holes; every
 * other chunk is verified (hash) before it is written. The file is built as `<target>.partial` and renamed when
 * complete, so a failed restore never leaves a file that looks whole.
 */
export async function restoreDisk(o: {
  manifest: Manifest;
  diskName: string;
  repository: Repository;
  pool: ChunkPool;
  target: string;
  signal?: AbortSignal;
  onProgress?: (p: { bytesDone: number; bytesTotal: number }) => void;
}): Promise<void> {
  const disk = o.manifest.disks.find((d) => d.name === o.diskName);
  if (!disk) throw new Error(`manifest of ${o.manifest.snapshotId} has no disk ${o.diskName}`);
  const partial = `${o.target}.partial`;
  try {
    await withFile(partial, 'w', (handle) => restoreInto(handle, disk, o));
  } catch (error) {
    await fs.rm(partial, { force: true });
    throw error;
  }
  await fs.rename(partial, o.target);
}

/** Fills an open image file with a disk's chunks; see restoreDisk. */
async function restoreInto(
  handle: FileHandle,
  disk: Manifest['disks'][number],
  o: Parameters<typeof restoreDisk>[0],
): Promise<void> {
  // Zero chunks are never written: the file is sized first, so they stay holes and read back as zeros.
  await handle.truncate(disk.sizeBytes);
  let bytesDone = 0;
  async function* frames() {
    for (const [index, ref] of disk.chunks.entries()) {
      o.signal?.throwIfAborted();
      yield { index, ref, frame: ref === ZERO_CHUNK ? null : await o.repository.getChunk(ref) };
    }
  }
  await orderedPipeline(
    inBatches(frames(), CHUNKS_PER_OPEN_TASK),
    o.pool.threads * IN_FLIGHT_PER_THREAD,
    (batch) => o.pool.openChunks(batch.flatMap((item) => (item.frame ? [{ frame: item.frame, id: item.ref }] : []))),
    async (chunks, batch) => {
      let next = 0;
      for (const item of batch) {
        if (item.frame) await writeExactly(handle, chunks[next++]!, item.index * disk.chunkSize);
        bytesDone += chunkLength(disk, item.index);
      }
      o.onProgress?.({ bytesDone, bytesTotal: disk.sizeBytes });
    },
  );
  await handle.sync();
}

export interface ManifestStats {
  logicalBytes: number;
  zeroBytes: number;
  distinctChunks: number;
  distinctRawBytes: number;
  storedBytes: number;
  /** distinctRawBytes / storedBytes */
  compressionRatio: number;
  /** (logicalBytes - zeroBytes) / distinctRawBytes */
  dedupRatio: number;
}

/** Sizes of a snapshot for display and billing; storedBytes is what its distinct chunks occupy compressed. */
export async function manifestStats(manifest: Manifest, repository: Repository): Promise<ManifestStats> {
  const lengths = distinctChunkLengths(manifest);
  let logicalBytes = 0;
  let zeroBytes = 0;
  for (const disk of manifest.disks) {
    logicalBytes += disk.sizeBytes;
    disk.chunks.forEach((ref, index) => {
      if (ref === ZERO_CHUNK) zeroBytes += chunkLength(disk, index);
    });
  }
  let storedBytes = 0;
  for (const id of lengths.keys()) storedBytes += await repository.chunkStoredSize(id);
  const distinctRawBytes = [...lengths.values()].reduce((a, b) => a + b, 0);
  return {
    logicalBytes,
    zeroBytes,
    distinctChunks: lengths.size,
    distinctRawBytes,
    storedBytes,
    compressionRatio: storedBytes > 0 ? distinctRawBytes / storedBytes : 1,
    dedupRatio: distinctRawBytes > 0 ? (logicalBytes - zeroBytes) / distinctRawBytes : 1,
  };
}
