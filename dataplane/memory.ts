/**
 * The data plane's working memory: shared, page-aligned buffers, reused for the life of the process.
 *
 * Shared, so the pool's threads read and write them in place; page-aligned, so direct I/O (O_DIRECT, see files.ts)
 * can read and write them. JavaScript gets page-aligned memory only from WebAssembly: V8 maps each WebAssembly.Memory
 * on whole pages of its own (ordinary Buffers sit wherever malloc puts them). Reused, because fresh memory is paid
 * for page by page (a fault and a zeroed page each; several times that on a VM whose host backs memory lazily), and
 * a worker that keeps its buffers between stages and snapshots pays that once instead of for every stage.
 */

const WASM_PAGE_BYTES = 64 * 1024;

// The one part of the WebAssembly global used here (Node's type definitions leave WebAssembly out).
declare const WebAssembly: {
  Memory: new (descriptor: { initial: number; maximum: number; shared: true }) => { buffer: SharedArrayBuffer };
};

/** A buffer of `size` bytes of shared memory that starts on a page boundary. */
export function sharedBuffer(size: number): Buffer {
  return Buffer.from(sharedMemory(Math.ceil(size / WASM_PAGE_BYTES) * WASM_PAGE_BYTES)).subarray(0, size);
}

/**
 * Whether `buffer` starts on a multiple of `alignment` (a power of two up to 64 KiB) in memory: shared memory at a
 * multiple of it from its start does, since all shared memory of the process comes from here.
 */
export function startsAligned(buffer: Buffer, alignment: number): boolean {
  return buffer.buffer instanceof SharedArrayBuffer && buffer.byteOffset % alignment === 0;
}

function sharedMemory(bytes: number): SharedArrayBuffer {
  const pages = Math.max(1, bytes / WASM_PAGE_BYTES);
  return new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true }).buffer;
}

/** What a BufferPool holds, in bytes of its blocks' reach (see BufferPool). */
export interface WorkingMemoryStats {
  /** Held blocks (in use + free) may reach this much; Infinity when unbudgeted. */
  budgetBytes: number;
  /** Blocks handed out and not given back yet. */
  inUseBytes: number;
  /** Blocks kept free for reuse. */
  freeBytes: number;
  /** The most the pool ever held at once (in use + free). */
  highWaterBytes: number;
}

/**
 * Free memory by size class (powers of two from 64 KiB). take(size) hands out a buffer of exactly `size` bytes on a
 * free block of its class, or on a new one; give() puts the block back.
 *
 * Only the pages a buffer's users touch are resident, so the classes waste address space, not memory: a block's
 * resident bytes are at most its reach, the largest size ever handed out on it, and the pool counts blocks by their
 * reach. Free blocks are kept only while everything the pool holds fits the budget; a block that does not fit is
 * dropped (V8 frees its memory once it is collected). The pool never refuses a take(): what is in use at once is
 * bounded by its users (the pipelines' in-flight limits, and the worker's limit on concurrent data activities, sized
 * from them so that it fits the budget). A buffer not given back (a failed task) is collected, and no longer
 * counted as in use once it is.
 */
export class BufferPool {
  private readonly free = new Map<number, SharedArrayBuffer[]>();
  private readonly reach = new WeakMap<SharedArrayBuffer, number>();
  private budgetBytes: number;
  private inUseBytes = 0;
  private freeBytes = 0;
  private highWaterBytes = 0;
  /** Uncounts the reach of a buffer collected without having been given back. */
  private readonly lost = new FinalizationRegistry<number>((reach) => {
    this.inUseBytes -= reach;
  });

  constructor(budgetBytes = Infinity) {
    this.budgetBytes = budgetBytes;
  }

  /** Sets the budget (the worker does, from its configuration); free blocks beyond it are dropped at once. */
  setBudget(bytes: number): void {
    this.budgetBytes = bytes;
    for (const [blockBytes, blocks] of this.free) {
      while (blocks.length > 0 && this.inUseBytes + this.freeBytes > this.budgetBytes) {
        this.freeBytes -= this.reach.get(blocks.pop()!)!;
      }
      if (blocks.length === 0) this.free.delete(blockBytes);
    }
  }

  stats(): WorkingMemoryStats {
    const { budgetBytes, inUseBytes, freeBytes, highWaterBytes } = this;
    return { budgetBytes, inUseBytes, freeBytes, highWaterBytes };
  }

  take(size: number): Buffer {
    const blockBytes = Math.max(WASM_PAGE_BYTES, 2 ** Math.ceil(Math.log2(size)));
    const reused = this.free.get(blockBytes)?.pop();
    const block = reused ?? sharedMemory(blockBytes);
    const before = reused ? this.reach.get(reused)! : 0;
    if (reused) this.freeBytes -= before;
    const reach = Math.max(before, size);
    this.reach.set(block, reach);
    this.inUseBytes += reach;
    this.highWaterBytes = Math.max(this.highWaterBytes, this.inUseBytes + this.freeBytes);
    const buffer = Buffer.from(block, 0, size);
    this.lost.register(buffer, reach, buffer);
    return buffer;
  }

  /** Gives back a buffer from take() (the whole block: views of it must no longer be used). */
  give(buffer: Buffer): void {
    const block = buffer.buffer as SharedArrayBuffer;
    const reach = this.reach.get(block)!;
    this.lost.unregister(buffer);
    this.inUseBytes -= reach;
    if (this.inUseBytes + this.freeBytes + reach > this.budgetBytes) return;
    this.freeBytes += reach;
    const list = this.free.get(block.byteLength);
    if (list) list.push(block);
    else this.free.set(block.byteLength, [block]);
  }

  async use<T>(size: number, fn: (buffer: Buffer) => Promise<T>): Promise<T> {
    const buffer = this.take(size);
    try {
      return await fn(buffer);
    } finally {
      this.give(buffer);
    }
  }
}

/**
 * The process's working memory: the pipelines and the repositories of the process draw from it. Unbudgeted until
 * the worker sets the budget (SNAP_DATA_MEMORY_MIB, see worker/worker.ts).
 */
export const workingMemory = new BufferPool();
