import fs from 'node:fs/promises';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { tsToMs } from '@temporalio/common/lib/time';
import { DefaultLogger, NativeConnection, Runtime } from '@temporalio/worker';
import { SnapshotClient } from '../client/snapshot-client';
import { startDevServer } from '../devserver/dev-server';
import type { DevServer } from '../devserver/dev-server';
import { ensureTemporalCli } from '../devserver/temporal-cli';
import type { Account, SnapshotRecord, Vm } from '../domain/model';
import { DEMO_ACCOUNT, openEmbeddedPlatform, writeGuestBlocks } from '../platform/local';
import type { EmbeddedPlatform } from '../platform/local';
import type { Hypervisor } from '../platform/ports';
import { createSnapshotWorker } from '../worker/worker';
import type { BlockWrite } from './images';
import { run, timed } from './util';
import { DEFAULT_HOST_ID } from '../domain/model';

export const ACCOUNT: Account = { ...DEMO_ACCOUNT, id: 'bench', name: 'Benchmark' };
const TASK_QUEUE = 'bench-snapshots';
const WARM_UP_DISK_BYTES = 64 * 1024 * 1024;

/** A timed snapshot: wall-clock seconds from the create request to the SUCCESS record, and each stage's share. */
export interface TimedSnapshot {
  seconds: number;
  record: SnapshotRecord;
  /** Seconds each activity ran (start to completion, as the server recorded them), in the order they ran. */
  activities: { name: string; seconds: number }[];
}

/** The whole service on one machine: dev server, worker, embedded platform, one VM whose root disk is the image. */
export interface SnapshotService {
  vm: Vm;
  /** A second VM with its own copy of the image, in another region: a second full snapshot into a fresh repository. */
  twin: Vm;
  /** The region repository `vm`'s snapshots go to. */
  repositoryDir: string;
  snapshot(name: string, vm?: Vm): Promise<TimedSnapshot>;
  /** Writes blocks to `vm`'s disk through the embedded guest's write path. */
  writeToDisk(writes: BlockWrite[]): Promise<void>;
  close(): Promise<void>;
}

/** The service a benchmark drives: the embedded platform, a Temporal client, the snapshot client, and close(). */
export interface BenchService {
  platform: EmbeddedPlatform;
  client: Client;
  snapshots: SnapshotClient;
  /** Stops the worker, the connections, the catalog and the server. */
  close: () => Promise<void>;
}

/**
 * Starts a Temporal dev server (in memory, no UI, free port), an embedded platform under `dataDir` holding the
 * benchmark account, and a snapshot worker with the default settings on `taskQueue`, over the platform's own
 * hypervisor or `hypervisor` when given.
 */
export async function startBenchService(options: {
  dataDir: string;
  taskQueue: string;
  hypervisor?: Hypervisor;
  log: (message: string) => void;
}): Promise<BenchService> {
  const cleanups: (() => Promise<void>)[] = [];
  const close = async (): Promise<void> => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  };
  try {
    // The SDK logs every worker state change at INFO; the benchmark's own log is enough. Must precede any connection,
    // and is installed once per process (an earlier section's runtime is gone once its connections closed).
    if (Runtime._instance === undefined) Runtime.install({ logger: new DefaultLogger('WARN') });
    const cliPath = await ensureTemporalCli(options.log);
    const server: DevServer = await startDevServer({ cliPath, port: 0, uiPort: false });
    cleanups.push(() => server.stop());

    const opened = openEmbeddedPlatform(options.dataDir);
    cleanups.push(async () => opened.catalog.close());
    opened.catalog.putAccount(ACCOUNT);
    const platform = options.hypervisor ? { ...opened, hypervisor: options.hypervisor } : opened;

    const nativeConnection = await NativeConnection.connect({ address: server.address });
    cleanups.push(() => nativeConnection.close());
    const connection = await Connection.connect({ address: server.address });
    cleanups.push(() => connection.close());
    const client = new Client({ connection, namespace: server.namespace });

    options.log('Bundling the workflows and starting the worker');
    const { worker, pool } = await createSnapshotWorker({
      connection: nativeConnection,
      namespace: server.namespace,
      taskQueue: options.taskQueue,
      platform,
    });
    cleanups.push(() => pool.destroy());
    const running = worker.run();
    cleanups.push(async () => {
      worker.shutdown();
      await running;
    });
    const snapshots = new SnapshotClient({ client, catalog: platform.catalog, taskQueue: options.taskQueue });
    return { platform: opened, client, snapshots, close };
  } catch (error) {
    await close();
    throw error;
  }
}

/**
 * The benchmark service (startBenchService) under `dataDir` with two ACTIVE VMs in different regions whose root disks
 * are copies of `image`, its worker warmed up.
 */
export async function startSnapshotService(options: {
  dataDir: string;
  image: string;
  imageBytes: number;
  log: (message: string) => void;
}): Promise<SnapshotService> {
  const { platform, client, snapshots, close } = await startBenchService({
    dataDir: options.dataDir,
    taskQueue: TASK_QUEUE,
    log: options.log,
  });
  try {
    const copyImage = (diskPath: string) => run('cp', ['--sparse=always', options.image, diskPath]);
    const vm = await registerVm(platform, 'vm-bench-01', 'CANADA-1', options.imageBytes, copyImage);
    const twin = await registerVm(platform, 'vm-bench-02', 'US-1', options.imageBytes, copyImage);
    // A running service's worker has run snapshots before: the very first workflow task of a new worker also loads
    // the workflow bundle (about 0.3 s), and its first stages fault in the working memory it then keeps. One small
    // snapshot in another region (so it shares no chunk with the timed ones) takes those costs outside the timings.
    options.log('Warming up the worker with a small snapshot');
    // Its 64 MiB disk holds a slice of the image: enough data to use every buffer the pipelines keep in flight.
    const warmUpVm = await registerVm(platform, 'vm-bench-warm-up', 'NORWAY-1', WARM_UP_DISK_BYTES, (diskPath) =>
      copySlice(options.image, diskPath, WARM_UP_DISK_BYTES),
    );
    await takeSnapshot(client, snapshots, warmUpVm, 'bench-warm-up');
    return {
      vm,
      twin,
      repositoryDir: path.join(options.dataDir, 'repositories', vm.region),
      snapshot: (name, which = vm) => takeSnapshot(client, snapshots, which, name),
      writeToDisk: (writes) => writeGuestBlocks(platform.hypervisor, vm, 'root', writes),
      close,
    };
  } catch (error) {
    await close();
    throw error;
  }
}

/** Registers an ACTIVE VM of the benchmark account (shaped like the demo fleet's) whose disk `fillDisk` writes. */
export async function registerVm(
  platform: EmbeddedPlatform,
  id: string,
  region: Vm['region'],
  sizeBytes: number,
  fillDisk: (diskPath: string) => Promise<unknown>,
): Promise<Vm> {
  const diskPath = path.join(platform.dataDir, 'disks', id, 'root.raw');
  await fs.mkdir(path.dirname(diskPath), { recursive: true });
  await fillDisk(diskPath);
  const config = { flavor: 'H100-SXM5-80GB', gpus: 8, vcpus: 128, ramGiB: 1024, image: 'ubuntu-22.04-cuda-12.4' };
  const vm = benchVm(id, region, { path: diskPath, sizeBytes }, config);
  platform.catalog.putVm(vm);
  return vm;
}

/** An ACTIVE VM of the benchmark account on the default host, with one disk `root` and `config`. */
export function benchVm(
  id: string,
  region: Vm['region'],
  root: { path: string; sizeBytes: number },
  config: Vm['config'],
): Vm {
  return {
    id,
    hostId: DEFAULT_HOST_ID,
    accountId: ACCOUNT.id,
    name: id.replace(/^vm-/, ''),
    region,
    flavor: 'H100-SXM5-80GB',
    status: 'ACTIVE',
    config,
    disks: [{ name: 'root', ...root }],
    labels: [],
  };
}

/** Writes `bytes` of `image`, from `offset` (by default a quarter of the way in) on, to a new file `target`. */
export async function copySlice(image: string, target: string, bytes: number, offset?: number): Promise<void> {
  const slice = Buffer.alloc(bytes);
  const source = await fs.open(image, 'r');
  try {
    await source.read(slice, 0, bytes, offset ?? (await source.stat()).size / 4);
  } finally {
    await source.close();
  }
  await fs.writeFile(target, slice);
}

/** createSnapshot + watchProgress, timed end to end; then each activity's run time, from the workflow's history. */
async function takeSnapshot(client: Client, snapshots: SnapshotClient, vm: Vm, name: string): Promise<TimedSnapshot> {
  const { seconds, value: record } = await timed(async () => {
    const started = await snapshots.createSnapshot({
      accountId: ACCOUNT.id,
      vmId: vm.id,
      region: vm.region,
      name,
      requestedBy: 'bench',
    });
    return snapshots.watchProgress(started);
  });
  return { seconds, record, activities: await activitySpans(client, record.workflowId) };
}

/** Seconds from start to completion of each activity the workflow ran (server timestamps), in order. */
export async function activitySpans(client: Client, workflowId: string): Promise<{ name: string; seconds: number }[]> {
  const { events } = await client.workflow.getHandle(workflowId).fetchHistory();
  const names = new Map<string, string>();
  const startedAt = new Map<string, number>();
  const spans: { name: string; seconds: number }[] = [];
  for (const event of events ?? []) {
    const id = String(event.eventId);
    const at = tsToMs(event.eventTime);
    if (event.activityTaskScheduledEventAttributes) {
      names.set(id, event.activityTaskScheduledEventAttributes.activityType?.name ?? '?');
    }
    const started = event.activityTaskStartedEventAttributes;
    if (started) startedAt.set(String(started.scheduledEventId), at);
    const completed = event.activityTaskCompletedEventAttributes;
    if (completed) {
      const scheduled = String(completed.scheduledEventId);
      spans.push({ name: names.get(scheduled) ?? '?', seconds: (at - (startedAt.get(scheduled) ?? at)) / 1000 });
    }
  }
  return spans;
}
