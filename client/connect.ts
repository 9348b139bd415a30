import { Client, Connection } from '@temporalio/client';
import type { Config } from '../domain/config';
import { openEmbeddedPlatform } from '../platform/local';
import { SnapshotClient } from './snapshot-client';

/** Connects a SnapshotClient to Temporal and the embedded catalog named by the configuration. */
export async function connectSnapshotClient(
  config: Config,
): Promise<{ snapshots: SnapshotClient; client: Client; close(): Promise<void> }> {
  const connection = await Connection.connect({ address: config.TEMPORAL_ADDRESS });
  const client = new Client({ connection, namespace: config.TEMPORAL_NAMESPACE });
  const platform = openEmbeddedPlatform(config.SNAP_DATA_DIR);
  return {
    snapshots: new SnapshotClient({ client, catalog: platform.catalog, taskQueue: config.SNAP_TASK_QUEUE }),
    client,
    async close() {
      await connection.close();
      platform.catalog.close();
    },
  };
}
