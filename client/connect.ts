import { Client, Connection } from '@temporalio/client';
import type { Config } from '../domain/config';
import { SnapshotError } from '../domain/errors';
import { openEmbeddedPlatform } from '../platform/local';
import type { LocalHypervisor } from '../platform/local';
import { BillingClient } from './billing-client';
import { MaintenanceClient } from './maintenance-client';
import { PolicyClient } from './policy-client';
import { SnapshotClient } from './snapshot-client';
import { requireWorkers } from './workers';

/**
 * How long to wait for the Temporal server to answer before saying it is not there. A server on this machine or in
 * the same data centre answers in milliseconds, one across an ocean (with TLS) in a few hundred; the SDK's default of
 * 10 s made every command hang that long when the server was not started.
 */
const CONNECT_TIMEOUT_MS = 1_000;

export interface ConnectedClients {
  snapshots: SnapshotClient;
  policies: PolicyClient;
  maintenance: MaintenanceClient;
  billing: BillingClient;
  /** The embedded platform's hypervisor, whose VM load figures (`setLoad`) stand in for real utilisation. */
  hypervisor: LocalHypervisor;
  client: Client;
  /** Refuses (`WorkerUnavailable`) when no worker polls the task queues the service's workflows run on. */
  requireWorkers(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Connects the client libraries to Temporal and the embedded catalog named by the configuration. Throws
 * `TemporalUnavailable` within about a second when the server does not answer.
 */
export async function connectSnapshotClient(config: Config): Promise<ConnectedClients> {
  const address = config.TEMPORAL_ADDRESS;
  const connection = await Connection.connect({ address, connectTimeout: CONNECT_TIMEOUT_MS }).catch(() => {
    throw new SnapshotError(
      'TemporalUnavailable',
      `No Temporal server answers at ${address} (TEMPORAL_ADDRESS): start one with \`npm run server\` ` +
        '(or the whole demo with `npm run demo`), then try again.',
    );
  });
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
    // The list grows with the service's task queues: every queue a command's workflows and activities run on.
    requireWorkers: () => requireWorkers(client, [config.SNAP_TASK_QUEUE]),
    async close() {
      await connection.close();
      platform.catalog.close();
    },
  };
}
