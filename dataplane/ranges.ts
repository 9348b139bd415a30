import type { ChunkRef } from './manifest';
import { ZERO_CHUNK } from './manifest';

/** A byte range of a disk: `length` bytes from `offset` on. */
export interface Range {
  offset: number;
  length: number;
}

/**
 * The refs of a disk's chunks that capture knows without reading them, from what the disk's view reports:
 * - a chunk that no `data` range touches reads as zeros: ZERO_CHUNK;
 * - in an incremental, a chunk that no `changed` range touches holds what it held in the parent: the parent's ref;
 * - every other chunk must be read (undefined).
 * `parentChunks` is the parent manifest's chunk list of the same disk, with the same chunk size and disk size.
 */
export function knownChunks(o: {
  sizeBytes: number;
  chunkSize: number;
  data: readonly Range[];
  incremental: { changed: readonly Range[]; parentChunks: readonly ChunkRef[] } | null;
}): (index: number) => ChunkRef | undefined {
  const totalChunks = Math.ceil(o.sizeBytes / o.chunkSize);
  const hasData = touchedChunks(o.data, o.chunkSize, totalChunks);
  const parentChunks = o.incremental?.parentChunks;
  if (parentChunks && parentChunks.length !== totalChunks) {
    throw new Error(`the parent has ${parentChunks.length} chunks, the disk ${totalChunks}`);
  }
  const changed = o.incremental ? touchedChunks(o.incremental.changed, o.chunkSize, totalChunks) : undefined;
  return (index) => {
    if (hasData[index] === 0) return ZERO_CHUNK;
    if (changed?.[index] === 0) return parentChunks?.[index];
    return undefined;
  };
}

/** 1 for each chunk that one of `ranges` touches (one byte per chunk: 4 MiB for a 1 TiB disk of 256 KiB chunks). */
function touchedChunks(ranges: readonly Range[], chunkSize: number, totalChunks: number): Uint8Array {
  const touched = new Uint8Array(totalChunks);
  for (const { offset, length } of ranges) {
    if (length <= 0) continue;
    const first = Math.floor(offset / chunkSize);
    const last = Math.min(totalChunks - 1, Math.floor((offset + length - 1) / chunkSize));
    touched.fill(1, first, last + 1);
  }
  return touched;
}
