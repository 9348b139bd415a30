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

/**
 * Free memory by size class (powers of two from 64 KiB). take(size) hands out a buffer of exactly `size` bytes on a
 * free block of its class, or on a new one; give() puts the block back. Only the pages a buffer's users touch are
 * resident, so the classes waste address space, not memory. The pool holds as many blocks of a class as were ever in
 * use at once (the pipelines' in-flight limits bound that). A buffer not given back (a failed task) is collected.
 */
export class BufferPool {
  private readonly free = new Map<number, SharedArrayBuffer[]>();

  take(size: number): Buffer {
    const blockBytes = Math.max(WASM_PAGE_BYTES, 2 ** Math.ceil(Math.log2(size)));
    return Buffer.from(this.free.get(blockBytes)?.pop() ?? sharedMemory(blockBytes), 0, size);
  }

  /** Gives back a buffer from take() (the whole block: views of it must no longer be used). */
  give(buffer: Buffer): void {
    const block = buffer.buffer as SharedArrayBuffer;
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

/** The process's working memory: the pipelines and the repositories of the process draw from it. */
export const workingMemory = new BufferPool();
