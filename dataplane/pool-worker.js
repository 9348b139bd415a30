// @ts-check
// Runs in the worker threads of ChunkPool (plain CommonJS: worker threads load it without the TypeScript transform).
'use strict';
const { setImmediate } = require('node:timers');
const { blake3 } = require('@napi-rs/blake-hash');
// The low-level bindings: one compression and one decompression context per thread, reused for every chunk, and no
// fresh memory per chunk (frames go into the caller's shared buffer, decompressed bytes into a reused one).
const zstd = require('zstd-napi/binding');

const ZERO_CHUNK = 'zero';
/** No chunk is larger: a frame header that claims more is damaged (and must not make this thread allocate it). */
const MAX_CHUNK_BYTES = 64 * 1024 * 1024;
/** @type {Buffer} */
let zeros = Buffer.alloc(0);

/** @param {Uint8Array} data */
function isZero(data) {
  if (zeros.length < data.length) zeros = Buffer.alloc(data.length);
  return Buffer.from(data.buffer, data.byteOffset, data.length).equals(zeros.subarray(0, data.length));
}

/** @param {Uint8Array} data */
function hashOf(data) {
  return blake3(data).toString('hex');
}

/**
 * Hashes every chunk of a segment; all-zero chunks come back as the zero marker.
 * @param {{ data: Uint8Array, chunkSize: number }} task
 * @returns {string[]}
 */
function hashSegment({ data, chunkSize }) {
  const refs = [];
  for (let offset = 0; offset < data.length; offset += chunkSize) {
    const chunk = data.subarray(offset, Math.min(offset + chunkSize, data.length));
    refs.push(isZero(chunk) ? ZERO_CHUNK : hashOf(chunk));
  }
  return refs;
}

/**
 * Re-hashes and compresses chunks into `into`, frame after frame; the length of each frame, or `null` for a chunk that
 * no longer hashes to its id (it is not compressed).
 * @param {{ chunks: { data: Uint8Array, id: string }[], level: number, into: Uint8Array }} task
 * @returns {(number | null)[]}
 */
function compressChunks({ chunks, level, into }) {
  const cctx = compressionContext(level);
  let end = 0;
  return chunks.map(({ data, id }) => {
    if (hashOf(data) !== id) return null;
    const length = cctx.compress2(into.subarray(end), data);
    end += length;
    return length;
  });
}

/** @type {{ cctx: any, level: number } | undefined} */
let compression;

/** This thread's compression context, set to `level` with frame checksums on. @param {number} level */
function compressionContext(level) {
  if (compression?.level !== level) {
    const cctx = new zstd.CCtx();
    cctx.setParameter(zstd.CParameter.compressionLevel, level);
    cctx.setParameter(zstd.CParameter.checksumFlag, 1);
    compression = { cctx, level };
  }
  return compression.cctx;
}

const dctx = new zstd.DCtx();

/** This thread's buffer for decompressed bytes, reused from call to call (grown when a chunk needs more). */
let decompressed = Buffer.alloc(0);

/**
 * Decompresses a frame, into `target` or else into this thread's reused buffer (valid until the next call), and checks
 * its hash.
 * @param {Uint8Array} frame
 * @param {string} id
 * @param {Uint8Array} [target]
 * @returns {{ data: Uint8Array } | { corrupt: string }}
 */
function decompressChecked(frame, id, target) {
  const corrupt = (/** @type {unknown} */ error) => ({
    corrupt: `zstd: ${error instanceof Error ? error.message : String(error)}`,
  });
  let size;
  try {
    size = zstd.getFrameContentSize(frame);
  } catch (error) {
    return corrupt(error);
  }
  if (size === null || size > MAX_CHUNK_BYTES) return { corrupt: `zstd: frame header claims ${size} bytes` };
  if (!target && decompressed.length < size) decompressed = Buffer.allocUnsafeSlow(size);
  const into = target ?? decompressed;
  if (into.length < size) throw new RangeError(`no room for a chunk of ${size} bytes (${into.length} left)`);
  let data;
  try {
    data = into.subarray(0, dctx.decompress(into, frame));
  } catch (error) {
    return corrupt(error);
  }
  const actual = hashOf(data);
  return actual === id ? { data } : { corrupt: `content hashes to ${actual}` };
}

/**
 * Opens a batch of stored frames into `into`, one chunk after the other: the raw length of each, or why it is
 * corrupt.
 * @param {{ items: { frame: Uint8Array, id: string }[], into: Uint8Array }} task
 * @returns {({ length: number } | { corrupt: string })[]}
 */
function openChunks({ items, into }) {
  let end = 0;
  return items.map(({ frame, id }) => {
    const opened = decompressChecked(frame, id, into.subarray(end));
    if ('corrupt' in opened) return opened;
    end += opened.data.length;
    return { length: opened.data.length };
  });
}

/**
 * Opens a batch of stored frames only to check them: the raw length of each sound one (the bytes stay here).
 * @param {{ items: { frame: Uint8Array, id: string }[] }} task
 * @returns {({ length: number } | { corrupt: string })[]}
 */
function checkChunks({ items }) {
  return items.map(({ frame, id }) => {
    const opened = decompressChecked(frame, id);
    return 'corrupt' in opened ? opened : { length: opened.data.length };
  });
}

/**
 * A task's work starts in a macrotask of its own. A thread holds two tasks at once (see ChunkPool), and Piscina starts
 * both in the same round of microtasks: run at once, the second task's work would come before the first's result is
 * posted, so the main thread would wait for both and then leave the thread idle until it hands out the next.
 * @template T, R
 * @param {(task: T) => R} work
 * @returns {(task: T) => Promise<R>}
 */
function afterPendingResults(work) {
  return (task) =>
    new Promise((resolve, reject) =>
      setImmediate(() => {
        try {
          resolve(work(task));
        } catch (error) {
          reject(error);
        }
      }),
    );
}

module.exports = {
  hashSegment: afterPendingResults(hashSegment),
  compressChunks: afterPendingResults(compressChunks),
  openChunks: afterPendingResults(openChunks),
  checkChunks: afterPendingResults(checkChunks),
};
