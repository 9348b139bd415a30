import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, bundleWorkflowCode } from '@temporalio/worker';
import { SnapshotClient } from '../client/snapshot-client';
import { startDevServer } from '../devserver/dev-server';
import { ensureTemporalCli } from '../devserver/temporal-cli';
import type { Vm } from '../domain/model';
import { openEmbeddedPlatform } from '../platform/local';
import { WORKFLOW_BUNDLE_OPTIONS } from '../worker/bundle';
import { ACCOUNT, copySlice, registerVm } from './service';
import { MiB, timed } from './util';

/** Concurrent snapshots of the measurement: each of its own VM (one snapshot in flight per VM). */
const CONCURRENT = 10;
/**
 * Each VM's disk: a slice of the benchmark image, each from another place, so that every snapshot stores its own
 * chunks (the slices do not overlap, and 4 KiB past a chunk boundary, they share no chunk either). 128 MiB keeps
 * every buffer the pipelines keep in flight in use for a while.
 */
const DISK_BYTES = 128 * MiB;
const SLICE_STRIDE = 89 * MiB + 4096;
/** The warm-up snapshot's disk (see startSnapshotService): another region, so it shares no repository. */
const WARM_UP_BYTES = 64 * MiB;

/** Peak RSS of a fresh worker process that ran a warm-up snapshot and then `snapshots` snapshots at once. */
export interface ConcurrencyRun {
  snapshots: number;
  peakRssBytes: number;
  /** From the first create request to the last SUCCESS. */
  seconds: number;
}

/**
 * (e) a fresh worker process (default settings, so the default memory budget) takes a warm-up snapshot, then 1
 * snapshot, and another fresh one a warm-up and then CONCURRENT snapshots at once; each one's peak RSS (VmHWM,
 * Linux) is read once its snapshots are SUCCESS.
 */
export async function benchConcurrency(options: {
  workDir: string;
  image: string;
  log: (message: string) => void;
}): Promise<{ one: ConcurrencyRun; many: ConcurrencyRun }> {
  const cliPath = await ensureTemporalCli(options.log);
  const server = await startDevServer({ cliPath, port: 0, uiPort: false });
  const connection = await Connection.connect({ address: server.address });
  const client = new Client({ connection, namespace: server.namespace });
  const bundle = path.join(options.workDir, 'workflow-bundle.js');
  // Webpack's progress chatter off; warnings and errors still show.
  const logger = new DefaultLogger('WARN');
  const { code } = await bundleWorkflowCode({ ...WORKFLOW_BUNDLE_OPTIONS, logger });
  await fs.writeFile(bundle, code);
  try {
    const measure = async (snapshots: number): Promise<ConcurrencyRun> => {
      options.log(`  ${snapshots} snapshot${snapshots > 1 ? 's at once' : ''}`);
      const dataDir = path.join(options.workDir, `concurrency-${snapshots}`);
      const platform = openEmbeddedPlatform(dataDir);
      try {
        platform.catalog.putAccount(ACCOUNT);
        const warmUp = await registerVm(platform, 'vm-warm-up', 'NORWAY-1', WARM_UP_BYTES, (disk) =>
          copySlice(options.image, disk, WARM_UP_BYTES),
        );
        const vms: Vm[] = [];
        for (let i = 0; i < snapshots; i++) {
          const id = `vm-concurrent-${String(i + 1).padStart(2, '0')}`;
          vms.push(
            await registerVm(platform, id, 'CANADA-1', DISK_BYTES, (disk) =>
              copySlice(options.image, disk, DISK_BYTES, i * SLICE_STRIDE),
            ),
          );
        }
        const taskQueue = `bench-concurrency-${snapshots}`;
        const snapshotClient = new SnapshotClient({ client, catalog: platform.catalog, taskQueue });
        const take = async (vm: Vm) => {
          const started = await snapshotClient.createSnapshot({
            accountId: ACCOUNT.id,
            vmId: vm.id,
            region: vm.region,
            name: `bench-${vm.name}`,
            requestedBy: 'bench',
          });
          return snapshotClient.watchProgress(started);
        };
        const worker = await startWorkerChild([server.address, server.namespace, taskQueue, dataDir, bundle]);
        try {
          await take(warmUp);
          const { seconds } = await timed(() => Promise.all(vms.map(take)));
          return { snapshots, peakRssBytes: await peakRss(worker.pid!), seconds };
        } finally {
          await stopChild(worker);
        }
      } finally {
        platform.catalog.close();
        await fs.rm(dataDir, { recursive: true, force: true });
      }
    };
    return { one: await measure(1), many: await measure(CONCURRENT) };
  } finally {
    await connection.close();
    await server.stop();
  }
}

/** `node --import tsx bench/worker-child.ts …`, resolved once it prints `ready`. */
function startWorkerChild(args: string[]): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const script = path.join(__dirname, 'worker-child.ts');
    const child = spawn(process.execPath, ['--import', 'tsx', script, ...args], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    child.on('error', reject);
    child.on('exit', (code) => reject(new Error(`worker child exited with ${code} before it was ready`)));
    child.stdout.on('data', (data: Buffer) => {
      if (data.toString().includes('ready')) resolve(child);
    });
  });
}

/** SIGTERM (a graceful shutdown), then waits for the exit. */
function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

/** VmHWM ("high water mark" of RSS) of a process, from /proc (Linux). */
async function peakRss(pid: number): Promise<number> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8');
  const kib = /^VmHWM:\s+(\d+) kB/m.exec(status)?.[1];
  if (!kib) throw new Error(`no VmHWM in /proc/${pid}/status`);
  return Number(kib) * 1024;
}
