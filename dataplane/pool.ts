import os from 'node:os';
import path from 'node:path';
import Piscina from 'piscina';
import { compressBound } from 'zstd-napi/binding';
import { ChunkCorruptError, DiskChangedError } from './errors';
import type { ChunkRef } from './manifest';

/** Default zstd level: level 1 runs at about 600 MB/s per core and already compresses disk data well. */
const DEFAULT_COMPRESSION_LEVEL = 1;
/**
 * Tasks handed to a thread at once: the one it works on and the next, queued in the thread itself, so that finishing
 * a task never leaves the thread waiting for the main thread (busy with reads and pack writes) to hand it another.
 */
const TASKS_PER_THREAD = 2;

/**
 * A worker-thread pool (one thread per core by default) for the CPU work: BLAKE3 hashing, zstd compression and
 * decompression. The pipeline sends many chunks per task (the plural methods), so messaging stays negligible next to
 * the work. Input buffers that own their whole ArrayBuffer are transferred, not copied: do not reuse them afterwards.
 */
export class ChunkPool {
  private readonly piscina: Piscina;
  private readonly level: number;

  constructor(options: { threads?: number; compressionLevel?: number } = {}) {
    const threads = options.threads ?? os.availableParallelism();
    this.level = options.compressionLevel ?? DEFAULT_COMPRESSION_LEVEL;
    this.piscina = new Piscina({
      filename: path.join(__dirname, 'pool-worker.js'),
      minThreads: threads,
      maxThreads: threads,
      concurrentTasksPerWorker: TASKS_PER_THREAD,
    });
  }

  /** Number of threads, so callers can size how much work they keep in flight. */
  get threads(): number {
    return this.piscina.options.maxThreads;
  }

  /** Hashes every chunk of a segment; zero chunks come back as ZERO_CHUNK. */
  hashSegment(data: Buffer, chunkSize: number): Promise<ChunkRef[]> {
    return this.piscina.run({ data, chunkSize }, { name: 'hashSegment', transferList: transferable(data) }) as Promise<
      ChunkRef[]
    >;
  }

  /**
   * Re-hashes chunks (each must still hash to its id) and compresses them, in one task: the threads write the zstd
   * frames one after the other into `into` (shared memory, at least the frameBound of every chunk together) and the
   * frames come back as views of it, so no memory is allocated per chunk. `offset` (the chunk's place in its disk)
   * only serves the error: the first chunk that no longer hashes to its id fails the whole call with DiskChangedError.
   */
  async compressChunks(chunks: { data: Buffer; id: string; offset?: number }[], into: Buffer): Promise<Buffer[]> {
    requireShared(into, 'compressChunks');
    const lengths = (await this.piscina.run(
      { chunks: chunks.map(({ data, id }) => ({ data, id })), level: this.level, into },
      { name: 'compressChunks', transferList: chunks.flatMap((c) => transferable(c.data)) },
    )) as (number | null)[];
    return consecutiveViews(
      into,
      lengths.map((length, i) => {
        if (length === null) throw new DiskChangedError(chunks[i]!.id, chunks[i]!.offset);
        return length;
      }),
    );
  }

  /**
   * Decompresses stored frames into `into` (shared memory with room for every chunk's raw bytes), one chunk after the
   * other, and checks BLAKE3 == id for each; returns the raw bytes as views of `into`. ChunkCorruptError for the first
   * bad one: its hash differs, or zstd rejects the frame (format or checksum error).
   */
  async openChunks(items: { frame: Buffer; id: string }[], into: Buffer): Promise<Buffer[]> {
    requireShared(into, 'openChunks');
    return consecutiveViews(into, await this.open('openChunks', { items, into }, items));
  }

  /**
   * openChunks that keeps nothing (verification needs only the verdict): the raw length of each chunk;
   * ChunkCorruptError for the first bad one.
   */
  checkChunks(items: { frame: Buffer; id: string }[]): Promise<number[]> {
    return this.open('checkChunks', { items }, items);
  }

  /** Runs an opening task (`openChunks` or `checkChunks`): the raw length of each chunk, or ChunkCorruptError. */
  private async open(
    name: 'openChunks' | 'checkChunks',
    task: object,
    items: { frame: Buffer; id: string }[],
  ): Promise<number[]> {
    const results = (await this.piscina.run(task, {
      name,
      transferList: items.flatMap((item) => transferable(item.frame)),
    })) as ({ length: number } | { corrupt: string })[];
    return results.map((result, i) => {
      if ('corrupt' in result) throw new ChunkCorruptError(items[i]!.id, result.corrupt);
      return result.length;
    });
  }

  /** Stops the threads; pending tasks are rejected. */
  destroy(): Promise<void> {
    return this.piscina.destroy();
  }
}

/** The most bytes the zstd frame of `rawBytes` bytes can take. */
export function frameBound(rawBytes: number): number {
  return compressBound(rawBytes);
}

/** A buffer's memory can be moved to a thread only when the buffer owns all of it (not a slice of Node's pool). */
function transferable(data: Buffer): ArrayBuffer[] {
  const buffer = data.buffer;
  return buffer instanceof ArrayBuffer && data.byteOffset === 0 && data.byteLength === buffer.byteLength
    ? [buffer]
    : [];
}

/** The pool's threads write results in place only into shared memory. */
function requireShared(into: Buffer, method: string): void {
  if (!(into.buffer instanceof SharedArrayBuffer)) throw new Error(`${method} writes into shared memory only`);
}

/** Views of `into` of these lengths, one after the other from its start. */
function consecutiveViews(into: Buffer, lengths: number[]): Buffer[] {
  let end = 0;
  return lengths.map((length) => into.subarray(end, (end += length)));
}
