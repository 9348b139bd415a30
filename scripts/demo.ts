import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { apiLimits, createApiServer } from '../api/server';
import { snapshotDetails } from '../client/format';
import { BillingClient } from '../client/billing-client';
import { MaintenanceClient } from '../client/maintenance-client';
import { PolicyClient } from '../client/policy-client';
import { stageProgressBar } from '../client/progress-bar';
import { SnapshotClient } from '../client/snapshot-client';
import type { StartedSnapshot } from '../client/snapshot-client';
import { startDevServer, isServerUp } from '../devserver/dev-server';
import { ensureTemporalCli } from '../devserver/temporal-cli';
import { formatMoney } from '../domain/billing';
import { loadConfig } from '../domain/config';
import { formatWindow } from '../domain/windows';
import { openEmbeddedPlatform, seedDemoFleet, writeGuestBlocks } from '../platform/local';
import { demoApiKeysFile, seedDemoApiKeys } from '../platform/local/seed';
import { DEFAULT_HOST_ID } from '../domain/model';
import type { Vm } from '../domain/model';
import { createSnapshotWorker } from '../worker/worker';
import { demoRealVm } from './demo-qemu';

/**
 * The main job on the embedded defaults (`npm run demo`): a Temporal dev server with the Web UI, the demo fleet, a
 * worker, then a full snapshot of a VM, some guest writes, an incremental snapshot of it, a nightly snapshot policy
 * (a Temporal Schedule), and a real QEMU VM snapshotted live and restored into a VM that boots (demo-qemu.ts). Server and worker stay up for the Web UI until Ctrl-C (or exit at once with --exit).
 */
async function main(): Promise<void> {
  const config = loadConfig();
  const exitWhenDone = process.argv.includes('--exit');
  const port = Number(config.TEMPORAL_ADDRESS.split(':').pop());
  const uiUrl = `http://localhost:${port + 1000}`;

  let server: { stop(): Promise<void> } | undefined;
  if (await isServerUp(config.TEMPORAL_ADDRESS)) {
    console.log(`Using the Temporal server already running at ${config.TEMPORAL_ADDRESS}`);
  } else {
    const cliPath = await ensureTemporalCli();
    server = await startDevServer({
      cliPath,
      port,
      uiPort: port + 1000,
      dbFile: path.join(config.SNAP_DATA_DIR, 'temporal', 'temporal.db'),
    });
    console.log(`Started the Temporal dev server at ${config.TEMPORAL_ADDRESS} (Web UI ${uiUrl})`);
  }

  const platform = openEmbeddedPlatform(config.SNAP_DATA_DIR);
  if (platform.catalog.listVms({}).length === 0) {
    console.log('Seeding the demo fleet (ext4 disk images built from system files)...');
    await seedDemoFleet(platform.catalog, { dataDir: config.SNAP_DATA_DIR });
  }

  const nativeConnection = await NativeConnection.connect({ address: config.TEMPORAL_ADDRESS });
  const connection = await Connection.connect({ address: config.TEMPORAL_ADDRESS });
  const client = new Client({ connection, namespace: config.TEMPORAL_NAMESPACE });
  const { worker, pool } = await createSnapshotWorker({
    connection: nativeConnection,
    namespace: config.TEMPORAL_NAMESPACE,
    taskQueue: config.SNAP_TASK_QUEUE,
    platform,
  });
  const running = worker.run();
  await new MaintenanceClient({ client, taskQueue: config.SNAP_TASK_QUEUE }).ensureSchedules();
  const billing = new BillingClient({ client, catalog: platform.catalog, taskQueue: config.SNAP_TASK_QUEUE });
  await billing.ensureSchedule();

  const snapshots = new SnapshotClient({ client, catalog: platform.catalog, taskQueue: config.SNAP_TASK_QUEUE });
  const policies = new PolicyClient({ client, catalog: platform.catalog, taskQueue: config.SNAP_TASK_QUEUE });

  // The HTTP API and the Snapshots page, up before the snapshots start so the page shows them running.
  const keys = await seedDemoApiKeys(platform.catalog, config.SNAP_DATA_DIR);
  const api = createApiServer({ snapshots, policies, billing, catalog: platform.catalog, limits: apiLimits(config) });
  const apiAddress = await api
    .listen({ host: config.SNAP_HTTP_HOST, port: config.SNAP_HTTP_PORT })
    .catch((error: unknown) => {
      throw new Error(`Cannot serve the Snapshots page (set SNAP_HTTP_PORT to a free port): ${String(error)}`);
    });
  console.log(`\nSnapshots page: ${apiAddress}/#key=${keys[config.SNAP_ACCOUNT]}`);
  console.log(
    `HTTP API: ${apiAddress}/api (the demo accounts' API keys are in ${demoApiKeysFile(config.SNAP_DATA_DIR)})`,
  );

  const eligible = snapshots.listEligibleVms(config.SNAP_ACCOUNT, 'CANADA-1');
  console.log(`\nEligible VMs in CANADA-1:\n${eligible.map((e) => `  ${e.label}`).join('\n')}`);
  // The embedded part snapshots a VM of the embedded host (the QEMU guest of an earlier run is on a host of its own).
  const vm = eligible.find((e) => e.vm.hostId === DEFAULT_HOST_ID)!.vm;
  const stamp = new Date().toISOString().slice(0, 16).replace(/[:T]/g, '-');

  const take = async (via: SnapshotClient, vm: Vm, name: string) => {
    console.log(`\nSnapshot "${name}" of ${vm.name}:`);
    const started: StartedSnapshot = await via.createSnapshot({
      accountId: config.SNAP_ACCOUNT,
      vmId: vm.id,
      region: vm.region,
      name,
      description: 'Taken by the demo',
      requestedBy: 'demo',
    });
    const bar = stageProgressBar();
    const record = await via.watchProgress(started, (p) => bar.update({ ...p, stage: p.status }));
    bar.stop();
    console.log(snapshotDetails(record));
    const workflowUrl = `${uiUrl}/namespaces/${config.TEMPORAL_NAMESPACE}/workflows/${encodeURIComponent(started.workflowId)}`;
    console.log(`Web UI: ${workflowUrl}`);
    return record;
  };

  await take(snapshots, vm, `${vm.name}-demo-${stamp}-v1`);
  // The guest keeps running: 64 scattered 4 KiB writes, then an incremental snapshot stores only what changed.
  const writes = Array.from({ length: 64 }, (_, i) => ({
    offset: ((i * 7919 + 13) % Math.floor(vm.disks[0]!.sizeBytes / 4096)) * 4096,
    data: Buffer.alloc(4096, `demo write ${i} at ${stamp}\n`),
  }));
  await writeGuestBlocks(platform.hypervisor, vm, 'root', writes);
  await take(snapshots, vm, `${vm.name}-demo-${stamp}-v2`);

  // Storage is billed hourly on what is stored (the Schedule does this at every full hour; here for the current one).
  await billing.meterHour(new Date());
  const bill = billing.accountBilling(config.SNAP_ACCOUNT);
  console.log(
    `\nStorage billed for ${bill.lastHour}: ${(bill.storedBytes / 2 ** 20).toFixed(1)} MiB, ` +
      `${formatMoney(bill.hourlyMicros, bill.currency)} per hour; balance ${formatMoney(bill.balanceMicros, bill.currency)}`,
  );

  // Recurring snapshots: a nightly policy for the VMs labelled "nightly", as a Temporal Schedule.
  const nightly = await policies.describePolicy(config.SNAP_ACCOUNT, 'nightly').catch(() =>
    policies.createPolicy({
      accountId: config.SNAP_ACCOUNT,
      name: 'nightly',
      target: { region: 'CANADA-1', label: 'nightly' },
      cadence: { kind: 'daily' },
      window: { start: '02:00', end: '05:00', timeZone: 'America/Toronto' },
      purpose: 'nightly',
      retention: { keepLast: 7, keepWeekly: 4 },
    }),
  );
  console.log(
    `\nPolicy "nightly" (${formatWindow(nightly.policy.window)}), next runs: ` +
      nightly.nextRuns
        .slice(0, 3)
        .map((t) => t.toISOString())
        .join(', '),
  );
  console.log(`Schedules in the Web UI: ${uiUrl}/namespaces/${config.TEMPORAL_NAMESPACE}/schedules`);

  await demoRealVm({
    platform,
    dataDir: config.SNAP_DATA_DIR,
    client,
    address: config.TEMPORAL_ADDRESS,
    namespace: config.TEMPORAL_NAMESPACE,
    taskQueue: config.SNAP_TASK_QUEUE,
    take,
  });

  console.log(
    `\nAll snapshots: npm run snap -- list    Search them in the Web UI: ${uiUrl} (query SnapshotVm="${vm.id}")`,
  );
  if (!exitWhenDone) {
    console.log(`Server, worker and the Snapshots page (${apiAddress}) keep running; press Ctrl-C to stop.`);
    await running;
  } else {
    worker.shutdown();
    await running;
  }
  await api.close();
  await pool.destroy();
  await connection.close();
  await nativeConnection.close();
  platform.catalog.close();
  await server?.stop();
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
