import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { BillingClient } from '../client/billing-client';
import { MaintenanceClient } from '../client/maintenance-client';
import { loadConfig } from '../domain/config';
import { openEmbeddedPlatform } from '../platform/local';
import { createSnapshotWorker } from './worker';

/** Worker entry point: `npm run worker`. Configuration comes from the environment (see domain/config.ts). */
async function main(): Promise<void> {
  const config = loadConfig();
  const platform = openEmbeddedPlatform(config.SNAP_DATA_DIR);
  const connection = await NativeConnection.connect({ address: config.TEMPORAL_ADDRESS });
  const clientConnection = await Connection.connect({ address: config.TEMPORAL_ADDRESS });
  const client = new Client({ connection: clientConnection, namespace: config.TEMPORAL_NAMESPACE });
  const { worker, pool } = await createSnapshotWorker({
    connection,
    namespace: config.TEMPORAL_NAMESPACE,
    taskQueue: config.SNAP_TASK_QUEUE,
    platform,
    captureMaxBytesPerSecond: config.SNAP_CAPTURE_MAX_MBPS * 1e6,
  });
  // The hourly metering Schedule and the daily garbage collection and re-verification Schedules (created once).
  await new BillingClient({ client, catalog: platform.catalog, taskQueue: config.SNAP_TASK_QUEUE }).ensureSchedule();
  await new MaintenanceClient({ client, taskQueue: config.SNAP_TASK_QUEUE }).ensureSchedules();
  console.log(`worker polling task queue "${config.SNAP_TASK_QUEUE}" on ${config.TEMPORAL_ADDRESS}`);
  try {
    await worker.run();
  } finally {
    await pool.destroy();
    await clientConnection.close();
    await connection.close();
    platform.catalog.close();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
