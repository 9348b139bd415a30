import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { BillingClient } from '../client/billing-client';
import { MaintenanceClient } from '../client/maintenance-client';
import { loadConfig } from '../domain/config';
import { openEmbeddedPlatform } from '../platform/local';
import type { Platform } from '../platform/ports';
import { QemuHypervisor } from '../platform/qemu/qemu-hypervisor';
import { installPrometheusRuntime } from './metrics';
import { createSnapshotWorker } from './worker';

/** Worker entry point: `npm run worker`. Configuration comes from the environment (see domain/config.ts). */
async function main(): Promise<void> {
  const config = loadConfig();
  installPrometheusRuntime(`${config.SNAP_METRICS_HOST}:${config.SNAP_WORKER_METRICS_PORT}`);
  const embedded = openEmbeddedPlatform(config.SNAP_DATA_DIR);
  const platform: Platform =
    config.SNAP_HYPERVISOR === 'qemu'
      ? {
          ...embedded,
          hypervisor: new QemuHypervisor(config.SNAP_QEMU_HOST_DIR ?? path.join(config.SNAP_DATA_DIR, 'qemu'), {
            accel: config.SNAP_QEMU_ACCEL,
            tempMinFreeMiB: config.SNAP_QEMU_TEMP_MIN_FREE_MIB,
          }),
        }
      : embedded;
  const connection = await NativeConnection.connect({ address: config.TEMPORAL_ADDRESS });
  const clientConnection = await Connection.connect({ address: config.TEMPORAL_ADDRESS });
  const client = new Client({ connection: clientConnection, namespace: config.TEMPORAL_NAMESPACE });
  const { worker, pool } = await createSnapshotWorker({
    connection,
    namespace: config.TEMPORAL_NAMESPACE,
    taskQueue: config.SNAP_TASK_QUEUE,
    hostId: config.SNAP_HOST_ID,
    platform,
    captureMaxBytesPerSecond: config.SNAP_CAPTURE_MAX_MBPS * 1e6,
    dataMemoryMiB: config.SNAP_DATA_MEMORY_MIB,
  });
  // The hourly metering Schedule and the daily garbage collection and re-verification Schedules (created once).
  await new BillingClient({ client, catalog: platform.catalog, taskQueue: config.SNAP_TASK_QUEUE }).ensureSchedule();
  await new MaintenanceClient({ client, taskQueue: config.SNAP_TASK_QUEUE }).ensureSchedules();
  const { budgetBytes, workingSetBytes, maxDataActivities } = worker.memory;
  console.log(
    `worker of host "${config.SNAP_HOST_ID}" polling task queue "${config.SNAP_TASK_QUEUE}" on ` +
      `${config.TEMPORAL_ADDRESS}; data stages: ` +
      `${maxDataActivities} at once in ${mib(budgetBytes)} MiB (${mib(workingSetBytes)} MiB each); hypervisor ` +
      config.SNAP_HYPERVISOR,
  );
  console.log(`worker metrics: http://${config.SNAP_METRICS_HOST}:${config.SNAP_WORKER_METRICS_PORT}/metrics`);
  try {
    await worker.run();
  } finally {
    await pool.destroy();
    await clientConnection.close();
    await connection.close();
    platform.catalog.close();
  }
}

function mib(bytes: number): number {
  return Math.round(bytes / (1024 * 1024));
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
