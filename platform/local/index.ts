import path from 'node:path';
import { LocalRepository } from '../../dataplane';
import type { Repository } from '../../dataplane';
import type { Region } from '../../domain/model';
import { LocalHypervisor } from './local-hypervisor';
import { SqliteCatalog } from './sqlite-catalog';

export { LocalHypervisor } from './local-hypervisor';
export { SqliteCatalog } from './sqlite-catalog';
export { writeGuestBlocks } from './guest';
export { DEMO_ACCOUNT, DEMO_ACCOUNTS, DEMO_FLEET, seedDemoFleet } from './seed';

/** The embedded platform under one data directory: everything a single machine needs, nothing else. */
export interface EmbeddedPlatform {
  dataDir: string;
  catalog: SqliteCatalog;
  hypervisor: LocalHypervisor;
  repositoryFor: (region: Region) => Repository;
}

/**
 * Layout: `catalog.db` (SQLite), `disks/<vm>/<disk>.raw` (VM disks), `views/<snapshot>/` (point-in-time views: the
 * blocks preserved since they opened), `vm-views/<vm>/` (a VM's open views), `locks/<vm>` (freeze and guest-write
 * lock), `load/<vm>.json` (load figures), `repositories/<REGION>/` (one content-addressed repository per region).
 */
export function openEmbeddedPlatform(dataDir: string): EmbeddedPlatform {
  const repositories = new Map<Region, Repository>();
  return {
    dataDir,
    catalog: new SqliteCatalog(path.join(dataDir, 'catalog.db')),
    hypervisor: new LocalHypervisor(dataDir),
    repositoryFor(region) {
      let repository = repositories.get(region);
      if (!repository) {
        repository = new LocalRepository(path.join(dataDir, 'repositories', region));
        repositories.set(region, repository);
      }
      return repository;
    },
  };
}
