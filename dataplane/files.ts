import fs from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';

/** Small file-system helpers the data plane (and the embedded platform's files) share. */

/** Fills `buffer` with the file's bytes from `position` on; an error if the file ends first. */
export async function readExactly(handle: FileHandle, buffer: Buffer, position: number): Promise<void> {
  let filled = 0;
  while (filled < buffer.length) {
    const { bytesRead } = await handle.read(buffer, filled, buffer.length - filled, position + filled);
    if (bytesRead === 0) throw new Error(`unexpected end of file at ${position + filled}`);
    filled += bytesRead;
  }
}

/** Writes all of `data` at `position`, however many writes that takes. */
export async function writeExactly(handle: FileHandle, data: Buffer, position: number): Promise<void> {
  let written = 0;
  while (written < data.length) {
    const { bytesWritten } = await handle.write(data, written, data.length - written, position + written);
    written += bytesWritten;
  }
}

/**
 * Writes all of `buffers`, one after the other, from `position` on, however many writes that takes (with direct I/O,
 * each buffer must be whole blocks).
 */
export async function writevExactly(handle: FileHandle, buffers: Buffer[], position: number): Promise<void> {
  const rest = buffers.filter((b) => b.length > 0);
  let at = position;
  while (rest.length > 0) {
    let { bytesWritten } = await handle.writev(rest, at);
    at += bytesWritten;
    while (rest.length > 0 && bytesWritten >= rest[0]!.length) bytesWritten -= rest.shift()!.length;
    if (bytesWritten > 0) rest[0] = rest[0]!.subarray(bytesWritten);
  }
}

/** Runs `use` on the file `opening` opens, and closes it whatever happens. */
export async function withHandle<T>(opening: Promise<FileHandle>, use: (handle: FileHandle) => Promise<T>): Promise<T> {
  const handle = await opening;
  try {
    return await use(handle);
  } finally {
    await handle.close();
  }
}

/**
 * Direct I/O: offsets and lengths are multiples of this (4 KiB covers 512-byte and 4 KiB sector devices), and
 * buffers start on one (sharedBuffer memory does).
 */
export const DIRECT_IO_BLOCK = 4096;

export function alignDown(n: number): number {
  return Math.floor(n / DIRECT_IO_BLOCK) * DIRECT_IO_BLOCK;
}

export function alignUp(n: number): number {
  return Math.ceil(n / DIRECT_IO_BLOCK) * DIRECT_IO_BLOCK;
}

/**
 * Opens a file for direct I/O (O_DIRECT: reads and writes go between the device and the caller's buffer, not through
 * the page cache) where the platform and the file system allow it, else as usual. Either way the caller keeps to
 * DIRECT_IO_BLOCK, so the same code serves both.
 */
export async function openDirect(file: string, flags: number): Promise<FileHandle> {
  const { O_DIRECT } = fs.constants;
  if (O_DIRECT !== undefined) {
    try {
      return await fs.open(file, flags | O_DIRECT);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EINVAL') throw error;
    }
  }
  return fs.open(file, flags);
}

/** Makes renames and new files in `dir` durable. */
export async function syncDir(dir: string): Promise<void> {
  await withHandle(fs.open(dir, 'r'), (handle) => handle.sync());
}

/** Whether `file` exists (and this process may see it). */
export async function pathExists(file: string): Promise<boolean> {
  return fs.access(file).then(
    () => true,
    () => false,
  );
}

/** The names in `dir`; none when it does not exist. */
export async function listDir(dir: string): Promise<string[]> {
  return fs.readdir(dir).catch((error: unknown) => {
    if (isNotFound(error)) return [];
    throw error;
  });
}

export function isNotFound(error: unknown): boolean {
  return (error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

/**
 * The runs [first, last] of items 0 … count - 1 in which each item follows the one before (`follows(k)`: item k + 1
 * follows item k), so that each run can be read with one read.
 */
export function* neighbourRuns(count: number, follows: (k: number) => boolean): Generator<[number, number]> {
  for (let first = 0; first < count;) {
    let last = first;
    while (last + 1 < count && follows(last)) last++;
    yield [first, last];
    first = last + 1;
  }
}
