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
import type { Repository } from '../dataplane';
import { createSnapshotWorker } from '../worker/worker';
import * as workflows from '../workflows';
import { seedTestFleet } from '../test/helpers/snapshot-env';

/** Where the replay test (test/replay.test.ts) reads the histories from: one `<workflowType>.json` per type. */
const HISTORIES_DIR = path.join(__dirname, '..', 'test', 'fixtures', 'histories');

const TASK_QUEUE = 'record-histories';

/**
 * Records one history of every workflow type into test/fixtures/histories (`npm run record-histories`): its own
 * in-memory dev server, the test fleet in a temp data dir and a worker on the current code, then one run of each
 * workflow through the service's clients, written as `<workflowType>.json`, and runs of other paths worth keeping as
 * `<workflowType>.<variant>.json` (a snapshot failing verification, with its compensations; a scheduled run waiting
 * for a busy VM on durable timers). Re-run it after a deliberate change to a workflow's commands (and wrap that change
 * in `patched()` so runs started by the old code still replay).
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
    const faults = { corruptReads: false };
    const { worker, pool } = await createSnapshotWorker({
      connection: nativeConnection,
      namespace: server.namespace,
      taskQueue: TASK_QUEUE,
      platform: { ...platform, repositoryFor: (region) => withFaults(platform.repositoryFor(region), faults) },
    });
    const running = worker.run();
    let variants: Map<string, string>;
    try {
      await runEveryWorkflow(client, platform, dataDir);
      variants = await runVariants(client, platform, faults);
    } finally {
      worker.shutdown();
      await running;
      await pool.destroy();
    }
    await writeHistories(client, variants);
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

/** The repository, whose reads (verification's, restores') return every frame with one byte flipped while asked to. */
function withFaults(repository: Repository, faults: { corruptReads: boolean }): Repository {
  return Object.assign(Object.create(repository) as Repository, {
    getChunks: async (ids: string[], into?: Buffer) => {
      const frames = await repository.getChunks(ids, into);
      if (faults.corruptReads) for (const frame of frames) frame[frame.length >> 1]! ^= 0xff;
      return frames;
    },
  });
}

/** Runs of other paths than the ones `runEveryWorkflow` takes: fixture name (`<type>.<variant>`) → workflow id. */
async function runVariants(
  client: Client,
  platform: ReturnType<typeof openEmbeddedPlatform>,
  faults: { corruptReads: boolean },
): Promise<Map<string, string>> {
  const options = { client, catalog: platform.catalog, taskQueue: TASK_QUEUE };
  const snapshots = new SnapshotClient(options);
  const policies = new PolicyClient(options);
  const vm = platform.catalog.getVm('vm-trainer-02')!;
  const variants = new Map<string, string>();

  step('snapshotWorkflow failing verification (compensations)');
  faults.corruptReads = true;
  try {
    const started = await snapshots.createSnapshot({
      accountId: vm.accountId,
      vmId: vm.id,
      region: vm.region,
      name: 'recorded-corrupt',
      createAsImage: false,
    });
    await client.workflow
      .getHandle(started.workflowId)
      .result()
      .then(
        () => {
          throw new Error('The snapshot meant to fail verification succeeded.');
        },
        () => undefined,
      );
    variants.set('snapshotWorkflow.failed-verification', started.workflowId);
  } finally {
    faults.corruptReads = false;
  }

  step('scheduledSnapshotWorkflow waiting for a busy VM');
  await platform.hypervisor.setLoad(vm.id, { cpuPercent: 95, diskIoPercent: 10 });
  await policies.createPolicy({
    accountId: vm.accountId,
    name: 'recorded-busy',
    target: { vmIds: [vm.id] },
    cadence: { kind: 'daily' },
    window: { start: '02:00', end: '05:00', timeZone: 'UTC' },
    retention: { keepLast: 1 },
    loadCheckSeconds: 1,
  });
  const run = await policies.triggerPolicy(vm.accountId, 'recorded-busy');
  const handle = client.workflow.getHandle(run.workflowId, run.runId);
  // Quiet again once the run has waited on two timers (three load readings).
  const deadline = Date.now() + 60_000;
  for (;;) {
    const history = await handle.fetchHistory();
    const fired = (history.events ?? []).filter((e) => e.timerFiredEventAttributes).length;
    if (fired >= 2) break;
    if (Date.now() > deadline) throw new Error(`The run waiting for ${vm.name} fired ${fired} timers in 60 s, not 2.`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  await platform.hypervisor.setLoad(vm.id, { cpuPercent: 5, diskIoPercent: 5 });
  await handle.result();
  await policies.deletePolicy(vm.accountId, 'recorded-busy');
  variants.set('scheduledSnapshotWorkflow.waited-for-load', run.workflowId);
  return variants;
}

/**
 * Writes the first closed run of each workflow type the worker ran (visibility is read until every exported
 * workflow has one) and the variants, replacing the previous fixtures.
 */
async function writeHistories(client: Client, variants: Map<string, string>): Promise<void> {
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
    const variantIds = new Set(variants.values());
    for (const run of closed) {
      if (variantIds.has(run.workflowId) || firstRuns.has(run.type)) continue;
      firstRuns.set(run.type, { workflowId: run.workflowId, runId: run.runId });
    }
    if (firstRuns.size < types.length) await new Promise((resolve) => setTimeout(resolve, 500));
  }
  await fs.rm(HISTORIES_DIR, { recursive: true, force: true });
  await fs.mkdir(HISTORIES_DIR, { recursive: true });
  const fixtures: [string, { workflowId: string; runId?: string }][] = [
    ...types.map((type) => [type, firstRuns.get(type)!] as [string, { workflowId: string; runId: string }]),
    ...[...variants].map(([name, workflowId]) => [name, { workflowId }] as [string, { workflowId: string }]),
  ];
  for (const [name, { workflowId, runId }] of fixtures) {
    const history = await client.workflow.getHandle(workflowId, runId).fetchHistory();
    const file = path.join(HISTORIES_DIR, `${name}.json`);
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
