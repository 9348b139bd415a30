/**
 * A worker in a process of its own for race tests, on the same data directory (catalog file, disks, repositories) and
 * task queue as the test's: validations then run in several processes at once, so only the catalog's transactions
 * keep reservations exact. Prints "ready" once polling; stops when stdin closes.
 *
 * Usage: tsx test/support/race-worker.ts <dataDir> <taskQueue> <captureMaxBytesPerSecond>
 */
import readline from 'node:readline';
import { openEmbeddedPlatform } from '../../platform/local';
import { createSnapshotWorker } from '../../worker/worker';
import { connectTestClient, testWorkflowBundle } from './temporal';

async function main(): Promise<void> {
  const [dataDir, taskQueue, maxBytesPerSecond] = process.argv.slice(2);
  const platform = openEmbeddedPlatform(dataDir!);
  const temporal = await connectTestClient();
  const { worker, pool } = await createSnapshotWorker({
    connection: temporal.nativeConnection,
    namespace: temporal.client.options.namespace,
    taskQueue: taskQueue!,
    platform,
    captureMaxBytesPerSecond: Number(maxBytesPerSecond),
    workflowBundle: testWorkflowBundle(),
  });
  const running = worker.run();
  process.stdout.write('ready\n');
  await new Promise<void>((resolve) => readline.createInterface({ input: process.stdin }).once('close', resolve));
  worker.shutdown();
  await running;
  await pool.destroy();
  await temporal.close();
  platform.catalog.close();
}

main().catch((error: unknown) => {
  process.stderr.write(`${String(error)}\n`);
  process.exit(1);
});
