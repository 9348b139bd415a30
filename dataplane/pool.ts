import os from 'node:os';
import path from 'node:path';
import Piscina from 'piscina';
import { ChunkCorruptError } from './errors';
import type { ChunkRef } from './manifest';

/** Default zstd level: level 1 runs at about 600 MB/s per core here and already compresses disk data well. */
export const DEFAULT_COMPRESSION_LEVEL = 1;

/**
 * A worker-thread pool (one thread per core) for the CPU work: BLAKE3 hashing, zstd compression and decompression.
 * Callers send whole segments of many chunks, so per-task messaging stays negligible next to the work.
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
    });
  }

  /** Number of threads, so callers can size how much work they keep in flight. */
  get threads(): number {
    return this.piscina.options.maxThreads;
  }

  /** Hashes every chunk of a segment; zero chunks come back as ZERO_CHUNK. The segment's buffer is transferred. */
  hashSegment(data: Buffer, chunkSize: number): Promise<ChunkRef[]> {
    return this.piscina.run({ data, chunkSize }, { name: 'hashSegment', transferList: transferable(data) }) as Promise<
      ChunkRef[]
    >;
  }

  /** Re-hashes and compresses chunks; `null` for a chunk whose content no longer matches its id. Buffers are transferred. */
  async compressChunks(chunks: { data: Buffer; id: string }[]): Promise<(Buffer | null)[]> {
    const results = (await this.piscina.run(
      { chunks, level: this.level },
      { name: 'compressChunks', transferList: chunks.flatMap((c) => transferable(c.data)) },
    )) as ({ frame: Uint8Array } | { changed: true })[];
    return results.map((r) => ('frame' in r ? Buffer.from(r.frame.buffer, r.frame.byteOffset, r.frame.length) : null));
  }

  /** Decompresses stored frames and checks BLAKE3 == id for each; ChunkCorruptError for the first bad one. */
  async openChunks(items: { frame: Buffer; id: string }[]): Promise<Buffer[]> {
    const results = (await this.piscina.run(
      { items },
      { name: 'openChunks', transferList: items.flatMap((item) => transferable(item.frame)) },
    )) as ({ data: Uint8Array } | { corrupt: string })[];
    return results.map((result, i) => {
      if ('corrupt' in result) throw new ChunkCorruptError(items[i]!.id, result.corrupt);
      return Buffer.from(result.data.buffer, result.data.byteOffset, result.data.length);
    });
  }

  destroy(): Promise<void> {
    return this.piscina.destroy();
  }
}

/** A buffer's memory can be moved to a thread only when the buffer owns all of it (not a slice of Node's pool). */
function transferable(data: Buffer): ArrayBuffer[] {
  const buffer = data.buffer;
  return buffer instanceof ArrayBuffer && data.byteOffset === 0 && data.byteLength === buffer.byteLength
    ? [buffer]
    : [];
}
