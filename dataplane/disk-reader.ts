import fs from 'node:fs/promises';
import { readExactly } from './files';

/**
 * Where capture and compression read a disk from: a raw image file, or a point-in-time view that a hypervisor driver
 * exposes (which may assemble its bytes from several places). Reads may run concurrently.
 */
export interface DiskReader {
  /** Fills `buffer` with the disk's bytes from `position` on; an error if the disk ends first. */
  read(buffer: Buffer, position: number): Promise<void>;
  close(): Promise<void>;
}

/** A raw image file as a DiskReader. */
export async function openImageFile(file: string): Promise<DiskReader> {
  const handle = await fs.open(file, 'r');
  return { read: (buffer, position) => readExactly(handle, buffer, position), close: () => handle.close() };
}

/** Runs `use` on the reader `opening` resolves to, and closes it afterwards. */
export async function withDiskReader<T>(
  opening: Promise<DiskReader>,
  use: (reader: DiskReader) => Promise<T>,
): Promise<T> {
  const reader = await opening;
  try {
    return await use(reader);
  } finally {
    await reader.close();
  }
}

/** Runs `use` on a DiskReader of a raw image file, closed afterwards. */
export function withImageFile<T>(file: string, use: (reader: DiskReader) => Promise<T>): Promise<T> {
  return withDiskReader(openImageFile(file), use);
}
