import { DefaultLogger, NativeConnection, Runtime } from '@temporalio/worker';
import { openEmbeddedPlatform } from '../platform/local';
import { createSnapshotWorker } from '../worker/worker';
import { errorText } from './util';

/**
 * `worker-child.ts <Temporal address> <namespace> <task queue> <data dir> <workflow bundle>`: a snapshot worker with
 * the default settings in a process of its own, so the benchmark can read that process's peak RSS. The workflows come
 * bundled (bundling at start, as `npm run worker` does, peaks at a few hundred MiB itself). Prints `ready` once it
 * polls; shuts down on SIGTERM.
 */
async function main(): Promise<void> {
  const [address, namespace, taskQueue, dataDir, codePath] = process.argv.slice(2);
  if (!address || !namespace || !taskQueue || !dataDir || !codePath) {
    throw new Error('usage: worker-child.ts <Temporal address> <namespace> <task queue> <data dir> <workflow bundle>');
  }
  Runtime.install({ logger: new DefaultLogger('WARN') });
  const platform = openEmbeddedPlatform(dataDir);
  const connection = await NativeConnection.connect({ address });
  const { worker, pool } = await createSnapshotWorker({
    connection,
    namespace,
    taskQueue,
    platform,
    workflowBundle: { codePath },
  });
  process.once('SIGTERM', () => worker.shutdown());
  const running = worker.run();
  console.log('ready');
  try {
    await running;
  } finally {
    await pool.destroy();
    await connection.close();
    platform.catalog.close();
  }
}

main().catch((error: unknown) => {
  console.error(errorText(error));
  process.exit(1);
});
