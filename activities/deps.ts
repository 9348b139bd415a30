import type { ChunkPool, Repository } from '../dataplane';
import type { Region } from '../domain/model';
import type { Catalog, Hypervisor } from '../platform/ports';

/** The narrow ports activities work through; the worker passes real adapters, tests pass local ones. */
export interface ActivityDeps {
  catalog: Catalog;
  hypervisor: Hypervisor;
  /** The content-addressed repository of a region. */
  repositoryFor: (region: Region) => Repository;
  pool: ChunkPool;
  /** Capture read-rate cap in bytes per second, so a snapshot does not starve the VM's own I/O; 0 = none. */
  captureMaxBytesPerSecond: number;
}
