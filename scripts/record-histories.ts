import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { NativeConnection } from '@temporalio/worker';
import { BillingClient } from '../client/billing-client';
import { MaintenanceClient } from '../client/maintenance-client';
import { PolicyClient } from '../client/policy-client';
import { SnapshotClient } from '../client/snapshot-client';
import { startDevServer } from '../devserver/dev-server';
import { ensureTemporalCli } from '../devserver/temporal-cli';
import { openEmbeddedPlatform, writeGuestBlocks } from '../platform/local';
import { createSnapshotWorker } from '../worker/worker';
import * as workflows from '../workflows';
import { seedTestFleet } from '../test/helpers/snapshot-env';

/** Where the replay test (test/replay.test.ts) reads the histories from: one `<workflowType>.json` per type. */
const HISTORIES_DIR = path.join(__dirname, '..', 'test', 'fixtures', 'histories');

const TASK_QUEUE = 'record-histories';

/**
 * Records one history of every workflow type into test/fixtures/histories (`npm run record-histories`): its own
 * in-memory dev server, the test fleet in a temp data dir and a worker on the current code, then one run of each
 * workflow through the service's clients. Re-run it after a deliberate change to a workflow's commands (and wrap
 * that change in `patched()` so runs started by the old code still replay).
 */
async function main(): Promise<void> {
  const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'snap-record-'));
  const server = await startDevServer({ cliPath: await ensureTemporalCli(), port: 0, uiPort: false });
  const platform = openEmbeddedPlatform(dataDir);
  const nativeConnection = await NativeConnection.connect({ address: server.address });
  const connection = await Connection.connect({ address: server.address });
  try {
    await seedTestFleet(platform);
    const client = new Client({ connection, namespace: server.namespace });
    const { worker, pool } = await createSnapshotWorker({
      connection: nativeConnection,
      client,
      namespace: server.namespace,
      taskQueue: TASK_QUEUE,
      platform,
    });
    const running = worker.run();
    try {
      await runEveryWorkflow(client, platform, dataDir);
    } finally {
      worker.shutdown();
      await running;
      await pool.destroy();
    }
    await writeHistories(client);
  } finally {
    await connection.close();
    await nativeConnection.close();
    platform.catalog.close();
    await server.stop();
    await fs.rm(dataDir, { recursive: true, force: true });
  }
}

/** One run of each workflow type, each awaited to its end (in an order where each has something to do). */
async function runEveryWorkflow(
  client: Client,
  platform: ReturnType<typeof openEmbeddedPlatform>,
  dataDir: string,
): Promise<void> {
  const options = { client, catalog: platform.catalog, taskQueue: TASK_QUEUE };
  const snapshots = new SnapshotClient(options);
  const policies = new PolicyClient(options);
  const maintenance = new MaintenanceClient({ client, taskQueue: TASK_QUEUE });
  const billing = new BillingClient(options);
  const vm = platform.catalog.getVm('vm-trainer-01')!;
  const snapshot = async (name: string) =>
    snapshots.watchProgress(
      await snapshots.createSnapshot({
        accountId: vm.accountId,
        vmId: vm.id,
        region: vm.region,
        name,
        createAsImage: false,
      }),
    );

  step('snapshotWorkflow');
  const first = await snapshot('recorded-first');
  await writeGuestBlocks(platform.hypervisor, vm, 'root', [{ offset: 0, data: Buffer.alloc(4096, 'recorded\n') }]);
  const second = await snapshot('recorded-second');

  step('restoreDiskWorkflow, restoreVmWorkflow');
  await snapshots.restoreDisk({
    accountId: vm.accountId,
    snapshotId: second.id,
    diskName: 'root',
    targetPath: path.join(dataDir, 'restored-root.img'),
  });
  await snapshots.restoreVm({ accountId: vm.accountId, source: { snapshotId: second.id }, vmName: 'recorded-vm' });

  step('createImageWorkflow, deleteImageWorkflow, deleteSnapshotWorkflow');
  const image = await snapshots.createImage(vm.accountId, second.id, 'recorded-image');
  await snapshots.deleteImage(vm.accountId, image.id);
  await snapshots.deleteSnapshot(vm.accountId, first.id);

  step('scheduledSnapshotWorkflow (and the snapshot it starts as a child)');
  await policies.createPolicy({
    accountId: vm.accountId,
    name: 'recorded-policy',
    target: { vmIds: [vm.id] },
    cadence: { kind: 'daily' },
    window: { start: '02:00', end: '05:00', timeZone: 'UTC' },
    retention: { keepLast: 1 },
  });
  const run = await policies.triggerPolicy(vm.accountId, 'recorded-policy');
  await client.workflow.getHandle(run.workflowId, run.runId).result();
  await policies.deletePolicy(vm.accountId, 'recorded-policy');

  step('garbageCollectionWorkflow, reverifyWorkflow');
  await maintenance.collectGarbage(vm.region, 0);
  await maintenance.reverify(vm.region, 0);

  step('meteringWorkflow');
  await billing.meterHour(new Date());
}

/**
 * Writes the first closed run of each workflow type the worker ran (visibility is read until every exported
 * workflow has one), replacing the previous fixtures.
 */
async function writeHistories(client: Client): Promise<void> {
  const types = Object.keys(workflows).sort();
  const firstRuns = new Map<string, { workflowId: string; runId: string }>();
  const deadline = Date.now() + 30_000;
  while (firstRuns.size < types.length) {
    if (Date.now() > deadline) {
      const missing = types.filter((t) => !firstRuns.has(t));
      throw new Error(`No closed run of ${missing.join(', ')} is visible after 30 s: add it to runEveryWorkflow.`);
    }
    firstRuns.clear();
    const closed = [];
    for await (const run of client.workflow.list({
      query: `TaskQueue = "${TASK_QUEUE}" AND ExecutionStatus != "Running"`,
    })) {
      closed.push(run);
    }
    closed.sort((a, b) => a.startTime.getTime() - b.startTime.getTime());
    for (const run of closed) {
      if (!firstRuns.has(run.type)) firstRuns.set(run.type, { workflowId: run.workflowId, runId: run.runId });
    }
    if (firstRuns.size < types.length) await new Promise((resolve) => setTimeout(resolve, 500));
  }
  await fs.rm(HISTORIES_DIR, { recursive: true, force: true });
  await fs.mkdir(HISTORIES_DIR, { recursive: true });
  for (const type of types) {
    const { workflowId, runId } = firstRuns.get(type)!;
    const history = await client.workflow.getHandle(workflowId, runId).fetchHistory();
    const file = path.join(HISTORIES_DIR, `${type}.json`);
    // protobufjs's own JSON form (enum names, 64-bit numbers as strings, bytes in base64), which the replay test reads
    // back with `History.fromObject`: the SDK's proto-JSON helpers fail here (its nested protobufjs 8 rejects the
    // types of @temporalio/proto's protobufjs 7).
    const json = temporal.api.history.v1.History.fromObject(history).toJSON();
    await fs.writeFile(file, `${JSON.stringify(json, null, 1)}\n`);
    console.log(`${path.relative(process.cwd(), file)}: ${history.events?.length ?? 0} events (${workflowId})`);
  }
}

function step(text: string): void {
  console.log(`Running ${text}...`);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
