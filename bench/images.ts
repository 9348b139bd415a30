import fs from 'node:fs/promises';
import path from 'node:path';
import { makeExt4Image } from '../platform/local/seed';
import { GiB, KiB, MiB } from './util';

/** One block write to a disk, as a guest would issue it. */
export interface BlockWrite {
  offset: number;
  data: Buffer;
}

/** Size of the base disk image. */
export const IMAGE_BYTES = 1 * GiB;
/**
 * Bytes of real files put into the 1 GiB image: about 62 % full, like a used root disk, with enough free space left
 * (holes) for ext4's own metadata (inode tables, a 32 MiB journal).
 */
export const CONTENT_BUDGET_BYTES = 640 * MiB;
/**
 * Where the image's files come from, in this order, until the budget is reached: text (docs, headers) then shared
 * libraries, so the image compresses like a real system disk and not like zeros or random bytes.
 */
const CONTENT_SOURCES = ['/usr/share/doc', '/usr/include', '/usr/lib/x86_64-linux-gnu', '/usr/share', '/usr/lib'];
/** Where the changed blocks' new data comes from: executables, which none of the image's sources contain. */
const NEW_DATA_SOURCES = ['/usr/bin', '/usr/libexec', '/usr/sbin'];

/** The change between the base and the changed image (same figures as the design's chunk-size measurement). */
export const SCATTERED_WRITES = 300;
/** File-system block size: the unit of the scattered writes and of their alignment. */
export const BLOCK_BYTES = 4 * KiB;
/** One contiguous rewrite, e.g. a package upgrade or a rewritten data file. */
export const REGION_BYTES = 32 * MiB;
/** Fixed PRNG seed: every run changes the same blocks with the same bytes. */
const CHANGE_SEED = 0x5eed_2026;

/** The sparse disk for the memory measurement: 10 GiB, with the image's content at these offsets, holes elsewhere. */
export const SPARSE_DISK_BYTES = 10 * GiB;
const SPARSE_COPY_OFFSETS = [0, 4 * GiB, 9 * GiB];
/** Copy unit of the sparse disks; an all-zero block of this size is left as a hole (`place` maps such blocks). */
const ZEROS = Buffer.alloc(1 * MiB);

/**
 * Fills `dir` with hard links to (or, across file systems, copies of) real system files, walking the sources in
 * order until `budgetBytes` of content. Returns the content bytes.
 */
export async function buildStagingDir(dir: string, budgetBytes: number): Promise<{ files: number; bytes: number }> {
  const seen = new Set<string>();
  const total = { files: 0, bytes: 0 };
  for (const source of CONTENT_SOURCES) {
    for (const file of await regularFiles(source)) {
      if (total.bytes >= budgetBytes) return total;
      const stat = await fs.stat(file).catch(() => undefined);
      // Skip a file already taken through another hard link, and any file that would overflow the budget.
      if (!stat || seen.has(`${stat.dev}:${stat.ino}`) || total.bytes + stat.size > budgetBytes) continue;
      seen.add(`${stat.dev}:${stat.ino}`);
      const target = path.join(dir, path.relative('/', file));
      await fs.mkdir(path.dirname(target), { recursive: true });
      await fs.link(file, target).catch(() => fs.copyFile(file, target));
      total.files += 1;
      total.bytes += stat.size;
    }
  }
  return total;
}

/** `mke2fs -t ext4 -d staging` into a sparse image (free space stays holes, as on a thin-provisioned volume). */
export async function buildExt4Image(image: string, stagingDir: string): Promise<void> {
  await makeExt4Image(image, IMAGE_BYTES, stagingDir, 'bench-root');
}

/**
 * The changed image's writes: SCATTERED_WRITES 4 KiB blocks at seeded block-aligned offsets, and one REGION_BYTES
 * contiguous region, all of them new bytes taken from executables (realistic data that is in no chunk of the base).
 */
export async function planChanges(diskBytes: number): Promise<BlockWrite[]> {
  const random = mulberry32(CHANGE_SEED);
  const blocks = Math.floor(diskBytes / BLOCK_BYTES);
  const pool = await newDataPool(REGION_BYTES + SCATTERED_WRITES * BLOCK_BYTES);
  const regionBlock = Math.floor(random() * (blocks - REGION_BYTES / BLOCK_BYTES));
  const writes: BlockWrite[] = [{ offset: regionBlock * BLOCK_BYTES, data: pool.subarray(0, REGION_BYTES) }];
  for (let i = 0; i < SCATTERED_WRITES; i++) {
    const start = REGION_BYTES + i * BLOCK_BYTES;
    writes.push({
      offset: Math.floor(random() * blocks) * BLOCK_BYTES,
      data: pool.subarray(start, start + BLOCK_BYTES),
    });
  }
  return writes;
}

/** Writes the blocks into a file in place. */
export async function applyWrites(file: string, writes: BlockWrite[]): Promise<void> {
  const handle = await fs.open(file, 'r+');
  try {
    for (const { offset, data } of writes) await handle.write(data, 0, data.length, offset);
  } finally {
    await handle.close();
  }
}

/**
 * A `sizeBytes` file (default SPARSE_DISK_BYTES) holding `image`'s 1 MiB blocks where `place` puts each (default: a
 * whole copy at each of SPARSE_COPY_OFFSETS). All-zero blocks are skipped, so the image's free space and everything
 * between the placed blocks stay holes.
 */
export async function buildSparseDisk(
  target: string,
  image: string,
  sizeBytes = SPARSE_DISK_BYTES,
  place: (imageOffset: number) => number[] = (offset) => SPARSE_COPY_OFFSETS.map((copy) => copy + offset),
): Promise<void> {
  const source = await fs.open(image, 'r');
  const disk = await fs.open(target, 'w');
  const buffer = Buffer.alloc(ZEROS.length);
  try {
    await disk.truncate(sizeBytes);
    for (let position = 0; ; position += buffer.length) {
      const { bytesRead } = await source.read(buffer, 0, buffer.length, position);
      if (bytesRead === 0) break;
      const block = buffer.subarray(0, bytesRead);
      if (isZero(block)) continue;
      for (const offset of place(position)) await disk.write(block, 0, block.length, offset);
    }
  } finally {
    await source.close();
    await disk.close();
  }
}

/** Regular files under `dir`, sorted (so every run picks the same ones); missing folders give none. */
async function regularFiles(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { withFileTypes: true, recursive: true }).catch(() => []);
  return entries
    .filter((entry) => entry.isFile())
    .map((entry) => path.join(entry.parentPath, entry.name))
    .sort();
}

/** `bytes` of executable code from NEW_DATA_SOURCES, concatenated (repeated if the machine has fewer). */
async function newDataPool(bytes: number): Promise<Buffer> {
  const pool = Buffer.alloc(bytes);
  let filled = 0;
  const files = (await Promise.all(NEW_DATA_SOURCES.map(regularFiles))).flat();
  if (files.length === 0) throw new Error(`no files in ${NEW_DATA_SOURCES.join(', ')} to take new data from`);
  for (let i = 0; filled < bytes; i++) {
    if (i === files.length && filled === 0) throw new Error(`${NEW_DATA_SOURCES.join(', ')} hold only empty files`);
    const content = await fs.readFile(files[i % files.length]!).catch(() => Buffer.alloc(0));
    filled += content.copy(pool, filled);
  }
  return pool;
}

function isZero(block: Buffer): boolean {
  return block.equals(ZEROS.subarray(0, block.length));
}

/** Small seeded PRNG (mulberry32): deterministic floats in [0, 1). */
function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
