import type { FileHandle } from 'node:fs/promises';
import { z } from 'zod';
import { alignUp } from './files';

/**
 * A pack holds many compressed chunks in one object, so storing a snapshot costs one write per pack instead of one
 * per chunk (as restic and borg do). Layout: the zstd frames in runs, each run starting on a direct I/O block (zeros
 * fill the gap before it), then a JSON index of every frame's place, then an 8-byte trailer: the index
 * length (uint32, big-endian) and the magic "SPK1". Packs are written whole and never changed.
 */
const MAGIC = Buffer.from('SPK1');
const TRAILER_BYTES = 8;
/** The index's JSON around its entries: `{"version":1,"chunks":[]}`. */
const INDEX_FRAME_BYTES = 25;
/** The most one index entry takes: `["<64 hex>",<offset>,<length>],` with numbers of up to 16 digits. */
const INDEX_ENTRY_MAX_BYTES = 103;

/** The most bytes the tail (index and trailer) of a pack of `chunks` chunks takes. */
export function packTailBound(chunks: number): number {
  return INDEX_FRAME_BYTES + chunks * INDEX_ENTRY_MAX_BYTES + TRAILER_BYTES;
}

/** A pack whose trailer or index cannot be read. */
export class PackDamagedError extends Error {}

/** Where a chunk's frame sits in its pack. */
export interface PackEntry {
  id: string;
  offset: number;
  length: number;
}

const PackIndexSchema = z.object({
  version: z.literal(1),
  chunks: z.array(z.tuple([z.string(), z.number().int().nonnegative(), z.number().int().positive()])),
});

/** A pack laid out for writing: `runs` go at their offsets, `tail` (index and trailer) at `tailOffset`, the end. */
export interface PackLayout {
  runs: { offset: number; bytes: Buffer }[];
  tail: Buffer;
  tailOffset: number;
  entries: PackEntry[];
}

/**
 * Lays out a pack holding `chunks` in order. Frames that lie one after the other in memory form one run, written
 * from where they are; each run, and the tail, starts on a direct I/O block.
 */
export function layOutPack(chunks: { id: string; frame: Buffer }[]): PackLayout {
  const runs: PackLayout['runs'] = [];
  const entries: PackEntry[] = [];
  let end = 0;
  for (const { id, frame } of chunks) {
    const run = runs.at(-1);
    if (run && follows(run.bytes, frame)) {
      run.bytes = Buffer.from(run.bytes.buffer, run.bytes.byteOffset, run.bytes.length + frame.length);
    } else {
      end = alignUp(end);
      runs.push({ offset: end, bytes: frame });
    }
    entries.push({ id, offset: end, length: frame.length });
    end += frame.length;
  }
  const index = Buffer.from(
    JSON.stringify({ version: 1, chunks: entries.map((e) => [e.id, e.offset, e.length]) } satisfies z.infer<
      typeof PackIndexSchema
    >),
  );
  const trailer = Buffer.alloc(TRAILER_BYTES);
  trailer.writeUInt32BE(index.length, 0);
  MAGIC.copy(trailer, 4);
  return { runs, tail: Buffer.concat([index, trailer]), tailOffset: alignUp(end), entries };
}

/** Whether `next` starts where `bytes` ends, in the same memory. */
function follows(bytes: Buffer, next: Buffer): boolean {
  return next.buffer === bytes.buffer && next.byteOffset === bytes.byteOffset + bytes.length;
}

/** Reads the index at the end of an open pack of `size` bytes; throws if the pack is not one (or is damaged). */
export async function readPackIndex(handle: FileHandle, size: number, name: string): Promise<PackEntry[]> {
  const damaged = (why: string) => new PackDamagedError(`pack ${name} is damaged: ${why}`);
  if (size < TRAILER_BYTES) throw damaged('shorter than its trailer');
  const trailer = await readAt(handle, size - TRAILER_BYTES, TRAILER_BYTES);
  if (!trailer.subarray(4).equals(MAGIC)) throw damaged('no pack trailer');
  const indexLength = trailer.readUInt32BE(0);
  const indexOffset = size - TRAILER_BYTES - indexLength;
  if (indexOffset < 0) throw damaged('index longer than the pack');
  const text = (await readAt(handle, indexOffset, indexLength)).toString();
  let parsed;
  try {
    parsed = PackIndexSchema.safeParse(JSON.parse(text));
  } catch {
    throw damaged('index is not JSON');
  }
  if (!parsed.success) throw damaged('unreadable index');
  const entries = parsed.data.chunks.map(([id, offset, length]) => ({ id, offset, length }));
  if (entries.some((e) => e.offset + e.length > indexOffset)) throw damaged('index points past the frames');
  return entries;
}

/**
 * Exactly `length` bytes at `position` (fewer only if the file is shorter), read into `into` (which must hold them) or
 * into a buffer of their own; that one owns its memory, so it can be transferred to a worker thread without a copy.
 */
export async function readAt(
  handle: FileHandle,
  position: number,
  length: number,
  into: Buffer = Buffer.allocUnsafeSlow(length),
): Promise<Buffer> {
  let filled = 0;
  while (filled < length) {
    const { bytesRead } = await handle.read(into, filled, length - filled, position + filled);
    if (bytesRead === 0) break;
    filled += bytesRead;
  }
  return into.subarray(0, filled);
}
