import type { Duration } from '@temporalio/common';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import type { Client } from '@temporalio/client';
import { BillingClient } from '../../client/billing-client';
import { MaintenanceClient } from '../../client/maintenance-client';
import { PolicyClient } from '../../client/policy-client';
import { SnapshotClient } from '../../client/snapshot-client';
import type { Repository } from '../../dataplane';
import type { ChunkPool } from '../../dataplane';
import { SnapshotError } from '../../domain/errors';
import type { Region, SnapshotRecord, Vm } from '../../domain/model';
import type { EmbeddedPlatform } from '../../platform/local';
import type { Catalog, Hypervisor, NewSnapshot } from '../../platform/ports';
import { openEmbeddedPlatform, seedDemoFleet, writeGuestBlocks } from '../../platform/local';
import { createSnapshotWorker } from '../../worker/worker';
import type { SnapshotWorker } from '../../worker/worker';
import { connectTestClient, testWorkflowBundle, uniqueId } from '../support/temporal';

const MiB = 1024 * 1024;

/** Small demo fleet for tests: real ext4 images from system files (64 MiB root, 32 MiB data). */
export async function seedTestFleet(platform: EmbeddedPlatform): Promise<void> {
  await seedDemoFleet(platform.catalog, {
    dataDir: platform.dataDir,
    rootDiskBytes: 64 * MiB,
    dataDiskBytes: 32 * MiB,
    rootSources: ['/usr/share/perl', '/usr/share/i18n', '/usr/share/doc'],
    dataSources: ['/usr/share/i18n', '/usr/share/zoneinfo', '/usr/share/doc'],
  });
}

export interface SnapshotEnv {
  platform: EmbeddedPlatform;
  snapshots: SnapshotClient;
  policies: PolicyClient;
  maintenance: MaintenanceClient;
  billing: BillingClient;
  client: Client;
  taskQueue: string;
  /**
   * Starts a worker (its main, host and data workers) on the env's task queue; `repositoryFor` lets a test wrap a
   * repository (fault injection), `captureGate` holds its captures where a test needs them.
   */
  startWorker(options?: {
    captureGate?: CaptureGate;
    captureMaxBytesPerSecond?: number;
    shutdownGraceTime?: Duration;
    dataMemoryMiB?: number;
    repositoryFor?: (region: Region) => Repository;
    /** Another hypervisor driver than the env's embedded one (the QEMU driver's tests). */
    hypervisor?: Hypervisor;
    /** The worker's host (DEFAULT_HOST_ID, the test fleet's, by default). */
    hostId?: string;
    /** How long a host-pinned step waits for its host's worker (DEFAULT_HOST_START_TIMEOUT_MS by default). */
    hostStartTimeoutMs?: number;
  }): Promise<RunningWorker>;
  close(): Promise<void>;
}

/**
 * Holds a worker's captures at a point: every read of a disk view from `fromByte` on waits until `release()`, so a
 * snapshot stays in data capture, with its progress up to there heartbeated, for as long as the test needs it there
 * (a condition, where a throttled capture is merely slow). Release it within the data stages' 10 s heartbeat timeout,
 * or the capture is retried.
 */
export class CaptureGate {
  private released = false;
  private open!: () => void;
  private readonly opened = new Promise<void>((resolve) => (this.open = resolve));
  private hold!: () => void;
  /** Resolves once a capture read has reached the hold. */
  readonly reached = new Promise<void>((resolve) => (this.hold = resolve));

  constructor(private readonly fromByte = 0) {}

  release(): void {
    this.released = true;
    this.open();
  }

  /** `hypervisor` with its views' reads held here. */
  wrap<H extends Hypervisor>(hypervisor: H): H {
    const readView: Hypervisor['readView'] = async (view) => {
      const reader = await hypervisor.readView(view);
      return {
        read: async (buffer, position) => {
          if (!this.released && position + buffer.length > this.fromByte) {
            this.hold();
            await this.opened;
          }
          return reader.read(buffer, position);
        },
        close: () => reader.close(),
      };
    };
    return new Proxy(hypervisor, {
      get(target, property) {
        if (property === 'readView') return readView;
        const value: unknown = Reflect.get(target, property);
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
  }
}

export interface RunningWorker {
  worker: SnapshotWorker;
  pool: ChunkPool;
  stop(): Promise<void>;
}

/** A fresh data dir with the test fleet, a client and workers on a unique task queue of the test server. */
export async function createSnapshotEnv(): Promise<SnapshotEnv> {
  const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'snap-test-'));
  const platform = openEmbeddedPlatform(dataDir);
  await seedTestFleet(platform);
  const temporal = await connectTestClient();
  const taskQueue = uniqueId('snapshots');
  const workers: RunningWorker[] = [];
  return {
    platform,
    taskQueue,
    client: temporal.client,
    snapshots: new SnapshotClient({ client: temporal.client, catalog: platform.catalog, taskQueue }),
    policies: new PolicyClient({ client: temporal.client, catalog: platform.catalog, taskQueue }),
    maintenance: new MaintenanceClient({ client: temporal.client, taskQueue }),
    billing: new BillingClient({ client: temporal.client, catalog: platform.catalog, taskQueue }),
    async startWorker(options = {}) {
      // A worker of a host of its own stands for another machine's worker: it has connections of its own (the SDK
      // refuses two workers of one task queue on one connection).
      const own = options.hostId === undefined ? undefined : await connectTestClient();
      const { worker, pool } = await createSnapshotWorker({
        connection: (own ?? temporal).nativeConnection,
        namespace: temporal.client.options.namespace,
        taskQueue,
        hostId: options.hostId,
        hostStartTimeoutMs: options.hostStartTimeoutMs,
        platform: {
          ...platform,
          repositoryFor: options.repositoryFor ?? platform.repositoryFor,
          hypervisor: options.captureGate
            ? options.captureGate.wrap(options.hypervisor ?? platform.hypervisor)
            : (options.hypervisor ?? platform.hypervisor),
        },
        captureMaxBytesPerSecond: options.captureMaxBytesPerSecond,
        shutdownGraceTime: options.shutdownGraceTime,
        dataMemoryMiB: options.dataMemoryMiB,
        workflowBundle: testWorkflowBundle(),
      }).catch(async (error: unknown) => {
        await own?.close();
        throw error;
      });
      const running = worker.run();
      const handle: RunningWorker = {
        worker,
        pool,
        async stop() {
          worker.shutdown();
          await running;
          await pool.destroy();
          await own?.close();
        },
      };
      workers.push(handle);
      return handle;
    },
    async close() {
      for (const w of workers) await w.stop();
      await temporal.close();
      platform.catalog.close();
      await fs.rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** SHA-256 of a whole file, to compare restored disks with their source. */
export async function fileHash(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Waits until `probe` returns a truthy value, polling; fails after `timeoutMs`. */
export async function waitFor<T>(probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error('waitFor timed out');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Takes a snapshot of `vm` through the client and waits for it to end; resolves with the SUCCESS record. */
export async function takeSnapshot(
  env: SnapshotEnv,
  vm: Vm,
  name: string,
  options: { createAsImage?: boolean } = {},
): Promise<SnapshotRecord> {
  const started = await env.snapshots.createSnapshot({
    accountId: vm.accountId,
    vmId: vm.id,
    region: vm.region,
    name,
    createAsImage: options.createAsImage ?? false,
  });
  return env.snapshots.watchProgress(started);
}

/** 24 scattered 4 KiB guest writes to the VM's root disk (positions and contents vary with `tag`). */
export async function scribble(env: SnapshotEnv, vm: Vm, tag: string): Promise<void> {
  const blocks = Math.floor(vm.disks[0]!.sizeBytes / 4096);
  const writes = Array.from({ length: 24 }, (_, i) => ({
    offset: ((i * 2711 + tag.length * 31) % blocks) * 4096,
    data: Buffer.alloc(4096, `${tag} ${i}\n`),
  }));
  await writeGuestBlocks(env.platform.hypervisor, vm, 'root', writes);
}

/** Expects `promise` to reject with a typed SnapshotError, and returns it. */
export async function refusal(promise: Promise<unknown>): Promise<SnapshotError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(SnapshotError);
  return error as SnapshotError;
}

/**
 * Reserves snapshot `id` of `vm` straight in `catalog`, as validation does once the rules pass (the catalog's own
 * checks still apply): named `id`, no description, key, policy or digest unless `fields` say otherwise.
 */
export function reserveTestSnapshot(
  catalog: Pick<Catalog, 'reserveSnapshot'>,
  vm: Pick<Vm, 'id' | 'accountId' | 'name' | 'region'>,
  id: string,
  fields: Partial<Pick<NewSnapshot, 'name' | 'description' | 'workflowId'>> = {},
): SnapshotRecord {
  return catalog.reserveSnapshot({
    id,
    accountId: vm.accountId,
    vmId: vm.id,
    vmName: vm.name,
    region: vm.region,
    name: id,
    description: '',
    createAsImage: false,
    workflowId: id,
    idempotencyKey: null,
    policyId: null,
    requestDigest: null,
    requestedAt: new Date().toISOString(),
    ...fields,
  });
}
