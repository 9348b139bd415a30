// @ts-check
// Runs in the worker threads of ChunkPool (plain CommonJS: worker threads load it without the TypeScript transform).
'use strict';
const { blake3 } = require('@napi-rs/blake-hash');
const { compress, decompress } = require('zstd-napi');

const ZERO_CHUNK = 'zero';
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
 * Re-hashes and compresses chunks; `null` for a chunk that no longer hashes to its id (it is not compressed).
 * @param {{ chunks: { data: Uint8Array, id: string }[], level: number }} task
 * @returns {(Uint8Array | null)[]}
 */
function compressChunks({ chunks, level }) {
  return chunks.map(({ data, id }) =>
    hashOf(data) === id ? compress(data, { compressionLevel: level, checksumFlag: true }) : null,
  );
}

/**
 * Decompresses a stored frame and checks its hash.
 * @param {{ frame: Uint8Array, id: string }} item
 * @returns {{ data: Uint8Array } | { corrupt: string }}
 */
function openChunk({ frame, id }) {
  let data;
  try {
    data = decompress(frame);
  } catch (error) {
    return { corrupt: `zstd: ${error instanceof Error ? error.message : String(error)}` };
  }
  const actual = hashOf(data);
  return actual === id ? { data } : { corrupt: `content hashes to ${actual}` };
}

/**
 * Opens a batch of stored frames.
 * @param {{ items: { frame: Uint8Array, id: string }[] }} task
 */
function openChunks({ items }) {
  return items.map(openChunk);
}

/**
 * Opens a batch of stored frames only to check them: the raw length of each sound one (the bytes stay here).
 * @param {{ items: { frame: Uint8Array, id: string }[] }} task
 * @returns {({ length: number } | { corrupt: string })[]}
 */
function checkChunks({ items }) {
  return items.map((item) => {
    const opened = openChunk(item);
    return 'corrupt' in opened ? opened : { length: opened.data.length };
  });
}

module.exports = { hashSegment, compressChunks, openChunks, checkChunks };
