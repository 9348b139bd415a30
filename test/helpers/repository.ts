import fs from 'node:fs/promises';
import type { LocalRepository, Repository } from '../../dataplane';

/**
 * Flips one byte in the middle of a stored chunk's frame, in place in its pack, as disk corruption would. Returns
 * a function that puts the byte back.
 */
export async function damageChunk(repository: Repository, id: string): Promise<() => Promise<void>> {
  const location = await (repository as LocalRepository).chunkLocation(id);
  if (!location) throw new Error(`chunk ${id} is not stored`);
  const position = location.offset + Math.floor(location.length / 2);
  const flip = async () => {
    const handle = await fs.open(location.file, 'r+');
    try {
      const byte = Buffer.alloc(1);
      await handle.read(byte, 0, 1, position);
      byte[0]! ^= 0xff;
      await handle.write(byte, 0, 1, position);
    } finally {
      await handle.close();
    }
  };
  await flip();
  return flip;
}

/** Removes a stored chunk whatever its age, as if its data were lost. */
export async function loseChunk(repository: Repository, id: string): Promise<void> {
  await repository.removeChunks([id], new Date(Date.now() + 3_600_000));
}

/** Sets the last write or touch of every stored chunk `ms` into the past, as if written then. */
export async function ageChunks(repository: Repository, ms: number): Promise<void> {
  const then = new Date(Date.now() - ms);
  const files = new Set<string>();
  for await (const chunk of repository.listChunks()) {
    const location = await (repository as LocalRepository).chunkLocation(chunk.id);
    if (location) files.add(location.file);
  }
  for (const file of files) await fs.utimes(file, then, then);
}
