import { Client, Connection } from '@temporalio/client';
import type { Config } from '../domain/config';
import { openEmbeddedPlatform } from '../platform/local';
import type { LocalHypervisor } from '../platform/local';
import { BillingClient } from './billing-client';
import { MaintenanceClient } from './maintenance-client';
import { PolicyClient } from './policy-client';
import { SnapshotClient } from './snapshot-client';

export interface ConnectedClients {
  snapshots: SnapshotClient;
  policies: PolicyClient;
  maintenance: MaintenanceClient;
  billing: BillingClient;
  /** The embedded platform's hypervisor, whose VM load figures (`setLoad`) stand in for real utilisation. */
  hypervisor: LocalHypervisor;
  client: Client;
  close(): Promise<void>;
}

/** Connects the client libraries to Temporal and the embedded catalog named by the configuration. */
export async function connectSnapshotClient(config: Config): Promise<ConnectedClients> {
  const connection = await Connection.connect({ address: config.TEMPORAL_ADDRESS });
  const client = new Client({ connection, namespace: config.TEMPORAL_NAMESPACE });
  const platform = openEmbeddedPlatform(config.SNAP_DATA_DIR);
  const options = { client, catalog: platform.catalog, taskQueue: config.SNAP_TASK_QUEUE };
  return {
    snapshots: new SnapshotClient(options),
    policies: new PolicyClient(options),
    maintenance: new MaintenanceClient(options),
    billing: new BillingClient(options),
    hypervisor: platform.hypervisor,
    client,
    async close() {
      await connection.close();
      platform.catalog.close();
    },
  };
}
