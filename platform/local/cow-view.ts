import fs from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { readExactly } from '../../dataplane';
import type { DiskReader } from '../../dataplane';

/**
 * Point-in-time views by copy-before-write, the way QEMU's backup job keeps one: opening a view copies nothing, so it
 * is instant whatever the disk's size; while it is open, the guest's write path first preserves each block it is
 * about to overwrite for the first time, and the view reads the live disk with the preserved blocks laid over it.
 *
 * Per disk of a view: `<disk>.cow` holds the preserved blocks, one slot of COW_BLOCK_BYTES each, and `<disk>.map`
 * the block number of each slot (uint32, little-endian), appended only once the slots' bytes are durable; the guest
 * overwrites the disk only once the map is. A reader reads the live disk first and the map after, so a block it read
 * from the disk either was not overwritten yet or is in the map by then, and is read again from its slot.
 */
export const COW_BLOCK_BYTES = 64 * 1024;
const MAP_RECORD_BYTES = 4;

function cowFiles(viewDir: string, diskName: string): { map: string; cow: string } {
  return { map: path.join(viewDir, `${diskName}.map`), cow: path.join(viewDir, `${diskName}.cow`) };
}

/** Creates a disk's empty preservation files in a view being opened. */
export async function createCowFiles(viewDir: string, diskName: string): Promise<void> {
  const files = cowFiles(viewDir, diskName);
  await fs.writeFile(files.cow, '');
  await fs.writeFile(files.map, '');
}

/**
 * The guest's side, called before it overwrites `ranges` of its disk (open as `disk`, `sizeBytes` long): copies every
 * block the ranges touch that the view has not preserved yet into the view. Durable when this resolves. A view
 * released meanwhile needs nothing.
 */
export async function preserveBlocks(
  viewDir: string,
  diskName: string,
  disk: FileHandle,
  sizeBytes: number,
  ranges: { offset: number; length: number }[],
): Promise<void> {
  const files = cowFiles(viewDir, diskName);
  const map = await fs.open(files.map, 'r+').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined; // released
    throw error;
  });
  if (!map) return;
  try {
    const preserved = await readMap(map, 0);
    const known = new Set(preserved);
    const blocks = new Set<number>();
    for (const { offset, length } of ranges) {
      for (let block = Math.floor(offset / COW_BLOCK_BYTES); block * COW_BLOCK_BYTES < offset + length; block++) {
        if (!known.has(block)) blocks.add(block);
      }
    }
    if (blocks.size === 0) return;
    const todo = [...blocks].sort((a, b) => a - b);
    const cow = await fs.open(files.cow, 'r+');
    try {
      const buffer = Buffer.alloc(COW_BLOCK_BYTES);
      for (const [i, block] of todo.entries()) {
        const start = block * COW_BLOCK_BYTES;
        const old = buffer.subarray(0, Math.min(COW_BLOCK_BYTES, sizeBytes - start));
        await readExactly(disk, old, start);
        await cow.write(old, 0, old.length, (preserved.length + i) * COW_BLOCK_BYTES);
      }
      await cow.sync();
    } finally {
      await cow.close();
    }
    const records = Buffer.alloc(todo.length * MAP_RECORD_BYTES);
    todo.forEach((block, i) => records.writeUInt32LE(block, i * MAP_RECORD_BYTES));
    // Written over a torn last record, if a crash left one: only whole records count.
    await map.write(records, 0, records.length, preserved.length * MAP_RECORD_BYTES);
    await map.sync();
  } finally {
    await map.close();
  }
}

/** The block numbers of the map's whole records from record `from` on, in slot order. */
async function readMap(map: FileHandle, from: number): Promise<number[]> {
  const { size } = await map.stat();
  const count = Math.floor(size / MAP_RECORD_BYTES) - from;
  if (count <= 0) return [];
  const records = Buffer.alloc(count * MAP_RECORD_BYTES);
  await readExactly(map, records, from * MAP_RECORD_BYTES);
  return Array.from({ length: count }, (_, i) => records.readUInt32LE(i * MAP_RECORD_BYTES));
}

/** A view of one disk: the live disk with the blocks preserved since the view was opened laid over it. */
export class CowViewReader implements DiskReader {
  /** Slot of each preserved block, as far as the map has been read. */
  private readonly slots = new Map<number, number>();
  private recordsRead = 0;

  private constructor(
    private readonly disk: FileHandle,
    private readonly map: FileHandle,
    private readonly cow: FileHandle,
  ) {}

  static async open(viewDir: string, diskName: string, diskPath: string): Promise<CowViewReader> {
    const files = cowFiles(viewDir, diskName);
    const handles: FileHandle[] = [];
    try {
      for (const file of [diskPath, files.map, files.cow]) handles.push(await fs.open(file, 'r'));
    } catch (error) {
      await Promise.all(handles.map((h) => h.close()));
      throw error;
    }
    const [disk, map, cow] = handles as [FileHandle, FileHandle, FileHandle];
    return new CowViewReader(disk, map, cow);
  }

  async read(buffer: Buffer, position: number): Promise<void> {
    await readExactly(this.disk, buffer, position);
    await this.refresh();
    if (this.slots.size === 0) return;
    const end = position + buffer.length;
    for (let block = Math.floor(position / COW_BLOCK_BYTES); block * COW_BLOCK_BYTES < end; block++) {
      const slot = this.slots.get(block);
      if (slot === undefined) continue;
      const from = Math.max(position, block * COW_BLOCK_BYTES);
      const to = Math.min(end, (block + 1) * COW_BLOCK_BYTES);
      const at = slot * COW_BLOCK_BYTES + (from - block * COW_BLOCK_BYTES);
      await readExactly(this.cow, buffer.subarray(from - position, to - position), at);
    }
  }

  async close(): Promise<void> {
    await Promise.all([this.disk.close(), this.map.close(), this.cow.close()]);
  }

  /** Reads the map's records appended since the last look (reads may run concurrently: records are idempotent). */
  private async refresh(): Promise<void> {
    const from = this.recordsRead;
    const blocks = await readMap(this.map, from);
    blocks.forEach((block, i) => this.slots.set(block, from + i));
    this.recordsRead = Math.max(this.recordsRead, from + blocks.length);
  }
}
