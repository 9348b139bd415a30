import type { Manifest } from '../dataplane';
import type { Region } from '../domain/model';
import type { ActivityDeps } from './deps';

/**
 * A snapshot's manifest from its region's repository, checked against the digest the catalog recorded when it was
 * written (ManifestCorrupt on a mismatch). Every activity that reads a manifest of a catalogued snapshot reads it here.
 */
export function readSnapshotManifest(deps: ActivityDeps, region: Region, snapshotId: string): Promise<Manifest> {
  return deps.repositoryFor(region).readManifest(snapshotId, deps.catalog.getSnapshot(snapshotId)?.manifestDigest);
}

/** The recorded manifest digest of every snapshot of a region (deleted ones included), by snapshot id. */
export function manifestDigests(deps: ActivityDeps, region: Region): Map<string, string> {
  const digests = new Map<string, string>();
  for (const snapshot of deps.catalog.listSnapshots({ region, includeDeleted: true })) {
    if (snapshot.manifestDigest) digests.set(snapshot.id, snapshot.manifestDigest);
  }
  return digests;
}
