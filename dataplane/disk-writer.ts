import fs from 'node:fs/promises';
import { writeExactly } from './files';

/**
 * Where a restore writes a disk: a raw image file, or a new VM's disk that a hypervisor driver opens for writing (the
 * write side of DiskReader). A new disk reads as zeros until written, so a restore writes only the chunks that hold
 * data. Writes may run concurrently.
 */
export interface DiskWriter {
  /** Writes all of `data` at `position`. */
  write(data: Buffer, position: number): Promise<void>;
  /** Makes every write so far durable. */
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** An image file (opened read-write, not truncated) as a DiskWriter. */
export async function openImageFileWriter(file: string): Promise<DiskWriter> {
  const handle = await fs.open(file, 'r+');
  return {
    write: (data, position) => writeExactly(handle, data, position),
    flush: () => handle.sync(),
    close: () => handle.close(),
  };
}

/** Runs `use` on the writer `opening` resolves to, and closes it afterwards. */
export async function withDiskWriter<T>(
  opening: Promise<DiskWriter>,
  use: (writer: DiskWriter) => Promise<T>,
): Promise<T> {
  const writer = await opening;
  try {
    return await use(writer);
  } finally {
    await writer.close();
  }
}
