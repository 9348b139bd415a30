import fs from 'node:fs/promises';
import type { ChunkRef, Manifest } from './manifest';
import { DEFAULT_CHUNK_SIZE, ZERO_CHUNK, chunkLength, distinctChunks } from './manifest';
import type { DiskReader } from './disk-reader';
import type { DiskWriter } from './disk-writer';
import { openImageFileWriter, withDiskWriter } from './disk-writer';
import { DIRECT_IO_BLOCK, alignUp, neighbourRuns, withHandle } from './files';
import type { ChunkPool } from './pool';
import { frameBound } from './pool';
import { workingMemory } from './memory';
import { packTailBound } from './pack';
import type { Repository } from './repository';
import { unreadableChunkError } from './repository';
import { WriteBehind } from './write-behind';

/** Bytes read per task sent to the pool: large enough to amortise messaging, small enough to bound memory. */
const SEGMENT_BYTES = 4 * 1024 * 1024;
/** Tasks in flight per pool thread: one working and the next ones already read, so no thread waits for a read. */
const IN_FLIGHT_PER_THREAD = 4;
/** Compressed bytes gathered into one pack before it is written. */
const PACK_BYTES = 16 * 1024 * 1024;
/**
 * A pack is written at the latest once it holds the frames of this many batches, so that the working memory the
 * pack holds (each batch's frames are in a buffer of their own) is bounded whatever the compression ratio. Eight
 * batches of SEGMENT_BYTES still fill PACK_BYTES at 2:1; the benchmark image (2.9:1) makes packs of about 11 MiB.
 */
const PACK_BATCHES = 8;
/** Stored chunks opened (decompressed and re-hashed) per pool task when verifying or restoring. */
const CHUNKS_PER_OPEN_TASK = 16;

/** Room to read one open task's frames of chunks up to `chunkSize`, with the whole blocks direct I/O reads. */
function openTaskBytes(chunkSize: number): number {
  return CHUNKS_PER_OPEN_TASK * (frameBound(chunkSize) + 2 * DIRECT_IO_BLOCK);
}

/** Chunks per segment (capture) and per batch (compression). */
function chunksPerSegment(chunkSize: number): number {
  return Math.max(1, Math.floor(SEGMENT_BYTES / chunkSize));
}

/**
 * The most working memory (bytes of reach, see BufferPool) one data activity holds at once, with a pool of `threads`
 * threads and chunks of `chunkSize`: the largest need of the stages, each derived from its in-flight limit
 * L = threads × IN_FLIGHT_PER_THREAD tasks (orderedPipeline never has more):
 * - capture: L segments being read or hashed;
 * - compression: L batches' chunks as read, L batches' frames, the frames of the pack being filled and of the one
 *   being written (PACK_BATCHES batches each; the next write waits for the last), and the room writing a pack copies
 *   into (each batch's run ends in a partial block, then the pack's tail);
 * - verification and re-verification: L open tasks' frames;
 * - restore: L open tasks' frames and decompressed chunks.
 * Garbage collection keeps one pack's frames at a time (read outside working memory, then copied into a new pack):
 * less than compression. With 2 threads and 256 KiB chunks, L = 8 and compression needs the most: about 128 MiB.
 */
export function dataActivityWorkingSet(threads: number, chunkSize: number = DEFAULT_CHUNK_SIZE): number {
  const inFlight = threads * IN_FLIGHT_PER_THREAD;
  const segment = chunksPerSegment(chunkSize) * chunkSize;
  const frames = chunksPerSegment(chunkSize) * frameBound(chunkSize);
  const packCopy = PACK_BATCHES * DIRECT_IO_BLOCK + alignUp(packTailBound(PACK_BATCHES * chunksPerSegment(chunkSize)));
  const capture = inFlight * segment;
  const compression = inFlight * segment + (inFlight + 2 * PACK_BATCHES) * frames + packCopy;
  const verification = inFlight * openTaskBytes(chunkSize);
  const restore = inFlight * (openTaskBytes(chunkSize) + CHUNKS_PER_OPEN_TASK * chunkSize);
  return Math.max(capture, compression, verification, restore);
}

/**
 * Runs `work` on items from `source` with at most `limit` in flight and hands results to `sink` in source order.
 * Items only describe work (what to read), and `work` does the reading too, so reads overlap each other and the
 * computing on the pool. Memory stays bounded by `limit` items whatever the source's size.
 */
async function orderedPipeline<T, R>(
  source: Iterable<T>,
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
    for (const item of source) {
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

/** A compressed chunk on its way to a pack: `index` is its place in the disk's chunk list. */
interface CompressedChunk {
  index: number;
  id: string;
  frame: Buffer;
}

/** The compressed chunks gathered for one pack, and the working memory their frames are in (given back once written). */
interface PendingPack {
  chunks: CompressedChunk[];
  bytes: number;
  memory: Buffer[];
}

/**
 * Stage "capture": hashes a disk's chunks from chunk `fromChunk` on, on the pool, and hands the ordered refs to
 * `onChunks` segment by segment (the caller journals and heartbeats them), with the bytes read for them. A chunk whose
 * ref `known` gives (see knownChunks) is not read; the others are read with one read per run of neighbouring chunks.
 */
export async function scanDisk(o: {
  disk: DiskReader;
  sizeBytes: number;
  chunkSize: number;
  pool: ChunkPool;
  fromChunk?: number;
  known?: (index: number) => ChunkRef | undefined;
  signal?: AbortSignal;
  onChunks: (startIndex: number, refs: ChunkRef[], bytesRead: number) => Promise<void> | void;
}): Promise<void> {
  const geometry = { sizeBytes: o.sizeBytes, chunkSize: o.chunkSize };
  const perSegment = chunksPerSegment(o.chunkSize);
  const totalChunks = Math.ceil(o.sizeBytes / o.chunkSize);
  function* segments() {
    for (let index = o.fromChunk ?? 0; index < totalChunks; index += perSegment) {
      o.signal?.throwIfAborted();
      const refs: (ChunkRef | undefined)[] = [];
      for (let i = index; i < Math.min(index + perSegment, totalChunks); i++) refs.push(o.known?.(i));
      yield { index, refs };
    }
  }
  /** Reads the segment's unknown chunks one after the other into `into` and hashes them; fills in their refs. */
  const readAndHash = async (segment: { index: number; refs: (ChunkRef | undefined)[] }, into: Buffer) => {
    const unknown = segment.refs.flatMap((ref, i) => (ref === undefined ? [segment.index + i] : []));
    const runs = neighbourRuns(unknown.length, (k) => unknown[k + 1]! === unknown[k]! + 1);
    const end = (unknown.length - 1) * o.chunkSize + chunkLength(geometry, unknown.at(-1)!);
    await Promise.all(
      [...runs].map(([first, last]) => {
        const start = first * o.chunkSize;
        const length = (last - first) * o.chunkSize + chunkLength(geometry, unknown[last]!);
        return o.disk.read(into.subarray(start, start + length), unknown[first]! * o.chunkSize);
      }),
    );
    // Only the disk's last chunk can be short, and it is the last one read: the chunks lie at chunkSize strides.
    const hashed = await o.pool.hashSegment(into.subarray(0, end), o.chunkSize);
    for (const [k, index] of unknown.entries()) segment.refs[index - segment.index] = hashed[k];
    return { refs: segment.refs as ChunkRef[], bytesRead: end };
  };
  await orderedPipeline(
    segments(),
    o.pool.threads * IN_FLIGHT_PER_THREAD,
    (segment) =>
      segment.refs.includes(undefined)
        ? workingMemory.use(perSegment * o.chunkSize, (buffer) => readAndHash(segment, buffer))
        : Promise.resolve({ refs: segment.refs as ChunkRef[], bytesRead: 0 }),
    (result, segment) => o.onChunks(segment.index, result.refs, result.bytesRead),
  );
  o.signal?.throwIfAborted();
}

/**
 * Stage "compress": stores every distinct non-zero chunk of `refs` (from index `fromIndex` on) that the repository
 * lacks, reading it from `disk`, re-hashing it (DiskChangedError if the view changed since capture) and compressing it
 * on the pool. Idempotent: what is already stored is skipped (and touched, see collectGarbage). `beforeWrite` is
 * given the ids of each pack's chunks before the pack is written, and the write waits for it: the caller records
 * there, durably, which chunks this call may have stored (a crash between the two leaves ids recorded, never a chunk
 * stored unrecorded).
 */
export async function storeChunks(o: {
  disk: DiskReader;
  chunkSize: number;
  sizeBytes: number;
  refs: ChunkRef[];
  repository: Repository;
  pool: ChunkPool;
  fromIndex?: number;
  signal?: AbortSignal;
  beforeWrite?: (ids: string[]) => Promise<void>;
  onProgress?: (p: { index: number; bytesDone: number }) => void;
}): Promise<{ chunksWritten: number; bytesWritten: number; storedBytesWritten: number }> {
  const geometry = { sizeBytes: o.sizeBytes, chunkSize: o.chunkSize };
  const chunksPerBatch = chunksPerSegment(o.chunkSize);
  const stats = { chunksWritten: 0, bytesWritten: 0, storedBytesWritten: 0 };
  const seen = new Set<string>();
  /** Batches of the chunks to consider (each distinct id once); `end` is the ref index covered (for progress). */
  function* batches() {
    for (let start = o.fromIndex ?? 0; start < o.refs.length; start += chunksPerBatch) {
      o.signal?.throwIfAborted();
      const end = Math.min(start + chunksPerBatch, o.refs.length);
      const candidates: { index: number; id: string }[] = [];
      for (let index = start; index < end; index++) {
        const id = o.refs[index]!;
        if (id === ZERO_CHUNK || seen.has(id)) continue;
        seen.add(id);
        candidates.push({ index, id });
      }
      yield { candidates, end };
    }
  }
  /**
   * A stored chunk is reused, and touched so that a concurrent garbage collection keeps it; the rest are read into
   * `into`, chunk after chunk, with one read per run of neighbouring chunks.
   */
  const readMissing = async (candidates: { index: number; id: string }[], into: Buffer) => {
    const touched = await o.repository.touchChunks(candidates.map((c) => c.id));
    const missing = candidates
      .filter((_, i) => !touched[i])
      .map(({ index, id }, i) => ({
        index,
        id,
        offset: index * o.chunkSize,
        data: into.subarray(i * o.chunkSize, i * o.chunkSize + chunkLength(geometry, index)),
      }));
    const runs = neighbourRuns(missing.length, (k) => missing[k + 1]!.index === missing[k]!.index + 1);
    await Promise.all(
      [...runs].map(([first, last]) => {
        const start = first * o.chunkSize;
        const end = start + (missing[last]!.offset - missing[first]!.offset) + missing[last]!.data.length;
        return o.disk.read(into.subarray(start, end), missing[first]!.offset);
      }),
    );
    return missing;
  };
  // Chunks are read into shared memory, and the pool threads compress them into shared memory too, from which the
  // pack is written (no frame is copied).
  const inputBytes = chunksPerBatch * o.chunkSize;
  const outputBytes = chunksPerBatch * frameBound(o.chunkSize);
  // A pack is written once it holds PACK_BYTES or PACK_BATCHES batches, behind compression (one write in flight while the next pack fills).
  // Progress is reported only once what precedes it is durable, because a retry resumes after it.
  let pack: PendingPack | undefined;
  const writes = new WriteBehind();
  const flush = (end: number) => {
    const full = pack;
    pack = undefined;
    return writes.push(async () => {
      if (full) {
        await o.beforeWrite?.(full.chunks.map((chunk) => chunk.id));
        const written = new Set(await o.repository.putChunks(full.chunks));
        for (const chunk of full.chunks) {
          if (!written.has(chunk.id)) continue;
          stats.chunksWritten++;
          stats.bytesWritten += chunkLength(geometry, chunk.index);
          stats.storedBytesWritten += chunk.frame.length;
        }
        for (const memory of full.memory) workingMemory.give(memory);
      }
      o.onProgress?.({ index: end, bytesDone: Math.min(end * o.chunkSize, o.sizeBytes) });
    });
  };
  try {
    await orderedPipeline(
      batches(),
      o.pool.threads * IN_FLIGHT_PER_THREAD,
      (batch) =>
        workingMemory.use(inputBytes, async (input) => {
          const chunks = await readMissing(batch.candidates, input);
          if (chunks.length === 0) return undefined;
          const output = workingMemory.take(outputBytes);
          const frames = await o.pool.compressChunks(chunks, output);
          const compressed = chunks.map((chunk, i) => ({ index: chunk.index, id: chunk.id, frame: frames[i]! }));
          return { compressed, output };
        }),
      async (result, batch) => {
        if (result) {
          pack ??= { chunks: [], bytes: 0, memory: [] };
          pack.chunks.push(...result.compressed);
          pack.bytes += result.compressed.reduce((sum, chunk) => sum + chunk.frame.length, 0);
          pack.memory.push(result.output);
        }
        if (!pack || pack.bytes >= PACK_BYTES || pack.memory.length >= PACK_BATCHES) await flush(batch.end);
      },
    );
    await flush(o.refs.length);
  } finally {
    await writes.drain();
  }
  await writes.settle();
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

/** Reused chunks whose records are inspected per repository call when planning a verification. */
const CHUNKS_PER_INSPECTION = 4096;

/** What a snapshot's verification reads, and which chunks it checks without reading them. */
export interface VerificationPlan {
  /** Chunks whose records vouch for them (see planVerification): verifyManifest does not read them. */
  vouched: Set<string>;
  /** Raw bytes of the chunks verifyManifest will read: every other distinct chunk of the manifest. */
  bytesToRead: number;
}

/**
 * Decides which chunks a snapshot's verification must read. `reused` are chunks a verification that passed has
 * already read back and that nothing since has contradicted (the caller's rule; see the verify activity). Each of
 * them in the manifest is checked here, without reading it: a chunk with no readable copy fails the verification at
 * once, as reading it would (ChunkMissingError, or ChunkCorruptError if its copies are quarantined); a chunk with a
 * quarantined copy is read after all, since its readable copy was stored after that verification; the others are
 * vouched for. Every chunk not in `reused` is read.
 */
export async function planVerification(o: {
  manifest: Manifest;
  repository: Repository;
  reused: ReadonlySet<string>;
}): Promise<VerificationPlan> {
  const lengths = distinctChunkLengths(o.manifest);
  const candidates = [...lengths.keys()].filter((id) => o.reused.has(id));
  const vouched = new Set<string>();
  for (let start = 0; start < candidates.length; start += CHUNKS_PER_INSPECTION) {
    const ids = candidates.slice(start, start + CHUNKS_PER_INSPECTION);
    const statuses = await o.repository.inspectChunks(ids);
    ids.forEach((id, i) => {
      const status = statuses[i]!;
      if (!status.readable) throw unreadableChunkError(id, status.quarantined);
      if (!status.quarantined) vouched.add(id);
    });
  }
  let bytesToRead = 0;
  for (const [id, length] of lengths) if (!vouched.has(id)) bytesToRead += length;
  return { vouched, bytesToRead };
}

/**
 * Stage "verify": reads back every distinct chunk the manifest references, except the `vouched` ones (see
 * planVerification; none when re-verifying), decompresses it (zstd frame checksum) and re-hashes it. Throws
 * ChunkMissingError or ChunkCorruptError for the first bad chunk. `index` counts distinct chunks in `distinctChunks`
 * order, vouched ones included, so that a checkpoint means the same whatever an attempt vouches for; bytes are the
 * raw (uncompressed) bytes of the chunks read.
 */
export async function verifyManifest(o: {
  manifest: Manifest;
  repository: Repository;
  pool: ChunkPool;
  vouched?: ReadonlySet<string>;
  fromIndex?: number;
  signal?: AbortSignal;
  onProgress?: (p: { index: number; total: number; bytesDone: number; bytesTotal: number }) => void;
}): Promise<{ chunksVerified: number; bytesVerified: number }> {
  const ids = distinctChunks(o.manifest);
  const lengths = distinctChunkLengths(o.manifest);
  const toRead = (id: string) => !o.vouched?.has(id);
  const bytesOf = (some: string[]) => some.filter(toRead).reduce((sum, id) => sum + lengths.get(id)!, 0);
  const bytesTotal = bytesOf(ids);
  let bytesDone = bytesOf(ids.slice(0, o.fromIndex ?? 0));
  let verified = 0;
  /** Up to CHUNKS_PER_OPEN_TASK chunks to read, passing over vouched ones (at most CHUNKS_PER_INSPECTION a batch). */
  function* batches() {
    let batch: string[] = [];
    let passed = 0;
    for (let index = o.fromIndex ?? 0; index < ids.length; index++) {
      const id = ids[index]!;
      if (toRead(id)) batch.push(id);
      else passed++;
      if (batch.length === CHUNKS_PER_OPEN_TASK || passed === CHUNKS_PER_INSPECTION || index === ids.length - 1) {
        o.signal?.throwIfAborted();
        yield { end: index + 1, ids: batch };
        batch = [];
        passed = 0;
      }
    }
  }
  // Frames are read into working memory, which the pool threads check in place.
  const readBytes = openTaskBytes(Math.max(1, ...o.manifest.disks.map((disk) => disk.chunkSize)));
  await orderedPipeline(
    batches(),
    o.pool.threads * IN_FLIGHT_PER_THREAD,
    (batch) =>
      batch.ids.length === 0
        ? Promise.resolve([])
        : workingMemory.use(readBytes, async (into) => {
            const frames = await o.repository.getChunks(batch.ids, into);
            return o.pool.checkChunks(batch.ids.map((id, i) => ({ id, frame: frames[i]! })));
          }),
    (rawLengths, batch) => {
      verified += rawLengths.length;
      bytesDone += rawLengths.reduce((sum, length) => sum + length, 0);
      o.onProgress?.({ index: batch.end, total: ids.length, bytesDone, bytesTotal });
    },
  );
  return { chunksVerified: verified, bytesVerified: bytesDone };
}

/** What a restore of one disk reads from; see restoreDisk and restoreDiskFile. */
interface RestoreOptions {
  manifest: Manifest;
  diskName: string;
  repository: Repository;
  pool: ChunkPool;
  signal?: AbortSignal;
  onProgress?: (p: { bytesDone: number; bytesTotal: number }) => void;
}

/**
 * Restores one disk through `target`, a disk of the manifest's size that reads as zeros: afterwards it is
 * byte-identical to the source at capture time. Zero chunks are never written; every other chunk is verified (hash)
 * before it is written, and the writes are flushed at the end. Rewriting a disk a failed attempt half wrote gives the
 * same result.
 */
export async function restoreDisk(o: RestoreOptions & { target: DiskWriter }): Promise<void> {
  const disk = o.manifest.disks.find((d) => d.name === o.diskName);
  if (!disk) throw new Error(`manifest of ${o.manifest.snapshotId} has no disk ${o.diskName}`);
  let bytesDone = 0;
  function* batches() {
    for (let start = 0; start < disk!.chunks.length; start += CHUNKS_PER_OPEN_TASK) {
      o.signal?.throwIfAborted();
      yield disk!.chunks.slice(start, start + CHUNKS_PER_OPEN_TASK).map((ref, i) => ({ index: start + i, ref }));
    }
  }
  await orderedPipeline(
    batches(),
    o.pool.threads * IN_FLIGHT_PER_THREAD,
    // Frames are read into working memory and decompressed into working memory, which is given back once written.
    (batch) =>
      workingMemory.use(openTaskBytes(disk.chunkSize), async (frameRoom) => {
        const stored = batch.filter((item) => item.ref !== ZERO_CHUNK);
        const frames = await o.repository.getChunks(
          stored.map((item) => item.ref),
          frameRoom,
        );
        const output = workingMemory.take(CHUNKS_PER_OPEN_TASK * disk.chunkSize);
        const chunks = await o.pool.openChunks(
          stored.map((item, i) => ({ id: item.ref, frame: frames[i]! })),
          output,
        );
        return { output, chunks: stored.map((item, i) => ({ index: item.index, data: chunks[i]! })) };
      }),
    async ({ output, chunks }, batch) => {
      await Promise.all(chunks.map(({ index, data }) => o.target.write(data, index * disk.chunkSize)));
      workingMemory.give(output);
      for (const item of batch) bytesDone += chunkLength(disk, item.index);
      o.onProgress?.({ bytesDone, bytesTotal: disk.sizeBytes });
    },
  );
  await o.target.flush();
}

/**
 * Restores one disk to a raw image file (sparse: zero chunks stay holes). The file is built as `<target>.partial`
 * and renamed when complete, so a failed restore never leaves a file that looks whole.
 */
export async function restoreDiskFile(o: RestoreOptions & { target: string }): Promise<void> {
  const disk = o.manifest.disks.find((d) => d.name === o.diskName);
  if (!disk) throw new Error(`manifest of ${o.manifest.snapshotId} has no disk ${o.diskName}`);
  const partial = `${o.target}.partial`;
  try {
    await withHandle(fs.open(partial, 'w'), (handle) => handle.truncate(disk.sizeBytes));
    await withDiskWriter(openImageFileWriter(partial), (target) => restoreDisk({ ...o, target }));
  } catch (error) {
    await fs.rm(partial, { force: true });
    throw error;
  }
  await fs.rename(partial, o.target);
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
