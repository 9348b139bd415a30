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

/** Makes renames and new files in `dir` durable. */
export async function syncDir(dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
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
