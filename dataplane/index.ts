/**
 * The data plane: fixed-size chunking, BLAKE3 ids, zstd on a worker-thread pool, a content-addressed repository,
 * manifests, verification, restore and garbage collection. A plain library with no Temporal imports; activities and
 * the benchmark call it.
 */
export {
  ChunkCorruptError,
  ChunkMissingError,
  DiskChangedError,
  ManifestCorruptError,
  ManifestMissingError,
  StorageFullError,
} from './errors';
export type { DataPlaneErrorType } from './errors';
export { DEFAULT_CHUNK_SIZE, ManifestSchema, ZERO_CHUNK, distinctChunks } from './manifest';
export type { ChunkRef, Manifest } from './manifest';
export { collectGarbage } from './gc';
export type { GcProgress, GcResult } from './gc';
export { openImageFile, withDiskReader, withImageFile } from './disk-reader';
export { listDir, pathExists, readExactly, syncDir } from './files';
export type { DiskReader } from './disk-reader';
export { openImageFileWriter, withDiskWriter } from './disk-writer';
export type { DiskWriter } from './disk-writer';
export { ChunkPool } from './pool';
export { WriteBehind } from './write-behind';
export { LocalRepository } from './repository';
export type { ChunkStatus, Repository, StoredChunk } from './repository';
export {
  dataActivityWorkingSet,
  manifestStats,
  planVerification,
  restoreDisk,
  restoreDiskFile,
  scanDisk,
  storeChunks,
  verifyManifest,
} from './pipeline';
export { knownChunks } from './ranges';
export type { Range } from './ranges';
export { workingMemory } from './memory';
export type { WorkingMemoryStats } from './memory';
export type { ManifestStats, VerificationPlan } from './pipeline';
