import { Client, Connection } from '@temporalio/client';
import { BillingClient } from '../client/billing-client';
import { PolicyClient } from '../client/policy-client';
import { SnapshotClient } from '../client/snapshot-client';
import { loadConfig } from '../domain/config';
import { openEmbeddedPlatform } from '../platform/local';
import { demoApiKeysFile } from '../platform/local/seed';
import { ApiMetrics, createMetricsServer } from './metrics';
import { apiLimits, createApiServer } from './server';

/**
 * `npm run api`: the HTTP API and the Snapshots page on SNAP_HTTP_HOST:SNAP_HTTP_PORT, against the configured Temporal
 * server and catalog. Snapshots are made by a worker running beside it (`npm run worker`). Logs requests as JSON lines.
 */
async function main(): Promise<void> {
  const config = loadConfig();
  const connection = await Connection.connect({ address: config.TEMPORAL_ADDRESS });
  const client = new Client({ connection, namespace: config.TEMPORAL_NAMESPACE });
  const platform = openEmbeddedPlatform(config.SNAP_DATA_DIR);
  const options = { client, catalog: platform.catalog, taskQueue: config.SNAP_TASK_QUEUE };
  const metrics = new ApiMetrics(options);
  const app = createApiServer({
    snapshots: new SnapshotClient(options),
    policies: new PolicyClient(options),
    billing: new BillingClient(options),
    catalog: platform.catalog,
    limits: apiLimits(config),
    metrics,
    logger: true,
  });
  const metricsServer = createMetricsServer(metrics);
  const metricsAddress = await metricsServer.listen({
    host: config.SNAP_METRICS_HOST,
    port: config.SNAP_API_METRICS_PORT,
  });
  const address = await app.listen({ host: config.SNAP_HTTP_HOST, port: config.SNAP_HTTP_PORT });
  console.log(
    `Snapshots page: ${address}/#key=<API key>  (the demo accounts' keys: ${demoApiKeysFile(config.SNAP_DATA_DIR)})`,
  );
  console.log(`API metrics: ${metricsAddress}/metrics`);
  const stop = async (): Promise<void> => {
    await app.close();
    await metricsServer.close();
    await connection.close();
    platform.catalog.close();
  };
  process.once('SIGINT', () => void stop());
  process.once('SIGTERM', () => void stop());
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
