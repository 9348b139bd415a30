import type { ChunkPool, Repository } from '../dataplane';
import type { HostPlacement, Region } from '../domain/model';
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
  /** The host this worker runs on (SNAP_HOST_ID): its hypervisor is `hypervisor`. */
  hostId: string;
  /** How long a host-pinned step waits for a worker of its host to start it (see HostPlacement). */
  hostStartTimeoutMs: number;
}

/** Where the steps of `hostId`'s VMs run, for a workflow to route them (see HostPlacement). */
export function placementOn(deps: ActivityDeps, hostId: string): HostPlacement {
  return { hostId, startTimeoutMs: deps.hostStartTimeoutMs };
}
