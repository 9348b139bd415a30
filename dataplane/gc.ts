import { ManifestCorruptError, ManifestMissingError } from './errors';
import { distinctChunks } from './manifest';
import type { Repository, StoredChunk } from './repository';

export interface GcProgress {
  /** `mark`: manifests read; `sweep`: unreferenced old chunks considered for deletion. */
  phase: 'mark' | 'sweep';
  done: number;
  total: number;
}

export interface GcResult {
  /** Stored chunks listed: referenced + kept by grace + removed (+ any deleted by someone else meanwhile). */
  chunksScanned: number;
  /** Stored chunks a manifest, an in-flight journal or an extra root references. */
  chunksReferenced: number;
  chunksRemoved: number;
  /** Compressed bytes of the removed chunks. */
  bytesFreed: number;
  /** Unreferenced chunks written or touched within the grace period. */
  chunksKeptByGrace: number;
}

/**
 * Mark and sweep of a region's repository: deletes every stored chunk that no manifest, no staging journal (of an
 * in-flight snapshot) and no `extraRoots` id references, and that was last written or touched before
 * `now - graceMs` (`now` defaults to the current time; tests pass a later one).
 *
 * Deletes nothing if any manifest is unreadable (see mark). Safe while snapshots run: a snapshot journals its refs before it stores or reuses the chunks, and storeChunks
 * touches every chunk it reuses. The mark runs again once the candidates are listed, so roots written meanwhile are
 * seen. A snapshot that reuses a candidate after that touches it, and removeChunks re-checks the mtime atomically:
 * the chunk is kept, or the touch finds it gone and the snapshot stores it again.
 */
export async function collectGarbage(
  repository: Repository,
  options: {
    graceMs: number;
    now?: Date;
    onProgress?: (p: GcProgress) => Promise<void> | void;
    extraRoots?: Iterable<string>;
    /** The recorded digest of each manifest, by snapshot id; each manifest read is checked against its own. */
    manifestDigests?: ReadonlyMap<string, string>;
  },
): Promise<GcResult> {
  const cutoff = new Date((options.now ?? new Date()).getTime() - options.graceMs);
  const marked = new Set(options.extraRoots);
  const digests = options.manifestDigests ?? new Map<string, string>();
  await mark(repository, marked, digests, (done, total) => options.onProgress?.({ phase: 'mark', done, total }));

  const result: GcResult = {
    chunksScanned: 0,
    chunksReferenced: 0,
    chunksRemoved: 0,
    bytesFreed: 0,
    chunksKeptByGrace: 0,
  };
  const candidates: StoredChunk[] = [];
  for await (const chunk of repository.listChunks()) {
    result.chunksScanned++;
    if (marked.has(chunk.id)) result.chunksReferenced++;
    else if (chunk.modifiedAt >= cutoff) result.chunksKeptByGrace++;
    else candidates.push(chunk);
  }

  await options.onProgress?.({ phase: 'sweep', done: 0, total: candidates.length });
  await mark(repository, marked, digests);
  const doomed = new Set<string>();
  for (const chunk of candidates) {
    if (marked.has(chunk.id)) result.chunksReferenced++;
    else doomed.add(chunk.id);
  }
  const removal = await repository.removeChunks(doomed, cutoff);
  result.chunksRemoved = removal.removed;
  result.bytesFreed = removal.bytesFreed;
  result.chunksKeptByGrace += removal.keptByGrace;
  await options.onProgress?.({ phase: 'sweep', done: candidates.length, total: candidates.length });
  return result;
}

/**
 * Adds to `marked` every chunk that a staging journal or a manifest references. Journals first: a snapshot writes
 * its manifest before it drops its journals, so one whose journals are gone by the time they are read is listed in
 * the manifests. A manifest that cannot be read (or does not match its digest) might reference any chunk, so
 * nothing could be proven unreferenced: the collection stops with a ManifestCorruptError naming it, before the sweep.
 */
async function mark(
  repository: Repository,
  marked: Set<string>,
  digests: ReadonlyMap<string, string>,
  onManifest?: (done: number, total: number) => Promise<void> | void,
): Promise<void> {
  for (const snapshotId of await repository.listStagingIds()) {
    for (const name of await repository.listJournals(snapshotId)) {
      for (const ref of await repository.readJournal(snapshotId, name)) marked.add(ref);
    }
  }
  const manifestIds = await repository.listManifestIds();
  for (const [index, snapshotId] of manifestIds.entries()) {
    const manifest = await repository.readManifest(snapshotId, digests.get(snapshotId)).catch((error: unknown) => {
      if (error instanceof ManifestMissingError) return null; // deleted since listed: references nothing
      if (error instanceof ManifestCorruptError) {
        throw new ManifestCorruptError(
          snapshotId,
          `${error.reason}; garbage collection of this repository deleted nothing and cannot run until the ` +
            'snapshot is deleted or its manifest restored',
        );
      }
      throw error;
    });
    if (manifest) for (const id of distinctChunks(manifest)) marked.add(id);
    await onManifest?.(index + 1, manifestIds.length);
  }
}
