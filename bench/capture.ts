import { LocalRepository, scanDisk, storeChunks, withImageFile } from '../dataplane';
import type { ChunkPool, ChunkRef } from '../dataplane';
import { dirSize, timed } from './util';

export interface CaptureResult {
  seconds: number;
  /** The two passes: read + hash, then read + compress + write of the missing chunks. */
  scanSeconds: number;
  storeSeconds: number;
  chunks: number;
  chunksWritten: number;
  /** Compressed bytes written to the repository (chunks it did not have yet). */
  storedBytesWritten: number;
}

/**
 * The worker's data path without Temporal: scan the disk (read, detect zero chunks, BLAKE3 on the pool), then store
 * every chunk the repository lacks (read again, zstd on the pool, atomic write). The same two calls the capture and
 * compression activities make, minus journaling and heartbeats.
 */
export async function captureDisk(options: {
  path: string;
  sizeBytes: number;
  chunkSize: number;
  repository: LocalRepository;
  pool: ChunkPool;
}): Promise<CaptureResult> {
  const { path, sizeBytes, chunkSize, repository, pool } = options;
  const refs: ChunkRef[] = [];
  // Each pass opens the image on its own, as the capture and compression activities each open the view.
  const scan = await timed(() =>
    withImageFile(path, (disk) =>
      scanDisk({
        disk,
        sizeBytes,
        chunkSize,
        pool,
        onChunks: (startIndex, chunkRefs) => {
          chunkRefs.forEach((ref, i) => (refs[startIndex + i] = ref));
        },
      }),
    ),
  );
  const store = await timed(() =>
    withImageFile(path, (disk) => storeChunks({ disk, chunkSize, sizeBytes, refs, repository, pool })),
  );
  return {
    seconds: scan.seconds + store.seconds,
    scanSeconds: scan.seconds,
    storeSeconds: store.seconds,
    chunks: refs.length,
    chunksWritten: store.value.chunksWritten,
    storedBytesWritten: store.value.storedBytesWritten,
  };
}

export interface GrowthResult {
  chunkSize: number;
  base: CaptureResult;
  changed: CaptureResult;
  /** Repository folder size (apparent bytes) after the base, and its growth from the changed image. */
  baseRepoBytes: number;
  repoGrowthBytes: number;
}

/** Captures the base image then the changed one into a fresh repository at `repoDir`: how much the change costs. */
export async function measureGrowth(options: {
  baseImage: string;
  changedImage: string;
  sizeBytes: number;
  chunkSize: number;
  repoDir: string;
  pool: ChunkPool;
}): Promise<GrowthResult> {
  const repository = new LocalRepository(options.repoDir);
  const capture = (path: string): Promise<CaptureResult> => captureDisk({ ...options, path, repository });
  const base = await capture(options.baseImage);
  const baseRepoBytes = (await dirSize(options.repoDir)).apparent;
  const changed = await capture(options.changedImage);
  const repoGrowthBytes = (await dirSize(options.repoDir)).apparent - baseRepoBytes;
  return { chunkSize: options.chunkSize, base, changed, baseRepoBytes, repoGrowthBytes };
}
