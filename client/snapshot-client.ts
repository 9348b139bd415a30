import { randomUUID } from 'node:crypto';
import type { Client, WorkflowExecutionDescription, WorkflowHandle } from '@temporalio/client';
import { WithStartWorkflowOperation } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { decodeFromPayloadsAtIndex } from '@temporalio/common/lib/internal-non-workflow';
import type { z } from 'zod';
import { NO_ACTIVE_VMS } from '../domain/acceptance';
import { MIN_COVERED_HOURS, formatMoney } from '../domain/billing';
import { SnapshotError, isSnapshotErrorType } from '../domain/errors';
import { imageIdFrom, isIdOf, snapshotIdFrom } from '../domain/ids';
import type { ImageRecord, Region, SnapshotProgress, SnapshotRecord, StageProgress, Vm } from '../domain/model';
import { RegionSchema, SnapshotStatusSchema, isInFlight } from '../domain/model';
import type { CreateSnapshotRequest, RestoreDiskRequest, RestoreVmRequest } from '../domain/requests';
import { CreateSnapshotRequestSchema, RestoreDiskRequestSchema, RestoreVmRequestSchema } from '../domain/requests';
import { checkOwnSnapshot, creditHoldFor, formatVmChoice } from '../domain/rules';
import { SnapshotStatus as SnapshotStatusKey } from '../domain/search-attributes';
import type { StageHeartbeat } from '../activities/progress';
import type { Catalog } from '../platform/ports';
import type {
  createImageWorkflow,
  deleteImageWorkflow,
  deleteSnapshotWorkflow,
  restoreDiskWorkflow,
  restoreVmWorkflow,
  snapshotWorkflow,
} from '../workflows';
import { deletionWorkflowId } from '../workflows/lifecycle';
import { JOINED_REFUSED_RUN, acceptedUpdate, restoreStateQuery } from '../workflows/messages';
import { snapshotStartOptions } from '../workflows/start-options';
import { workerCheck } from './workers';

export { NO_ACTIVE_VMS };

export interface SnapshotClientOptions {
  client: Client;
  catalog: Catalog;
  taskQueue: string;
}

/** A snapshot that was accepted: its id and the workflow that makes it. */
export interface StartedSnapshot {
  snapshotId: string;
  workflowId: string;
  /** The run that makes it, when known: watchProgress follows that run rather than the workflow id's latest. */
  runId?: string;
}

export interface EligibleVm {
  vm: Vm;
  /** `my-vm - H100-SXM5-80GB (CANADA-1)` */
  label: string;
}

/** Progress of a restore: bytes written over all its disks, throughput and ETA. */
export type RestoreProgress = StageProgress & { etaSeconds: number | null; done: boolean };

/**
 * How often a watcher reads a running workflow's progress. Each reading is a describe (answered by the server from
 * the workflow's state, no worker involved); activities heartbeat their progress at most once a second, so reading
 * more often would show nothing new.
 */
const PROGRESS_POLL_MS = 1000;
/**
 * How often createSnapshot starts a request again after joining a run that validation refused for another request of
 * the same name (each round answers at least that other request, so only a crowd of different refused requests for
 * one name needs more than a few).
 */
const MAX_CREATE_ATTEMPTS = 10;

/**
 * The typed client: what the CLI (and any program) uses to create, inspect and restore snapshots. Requests are
 * parsed with zod; the rules are checked by the workflow's validation, whose answer createSnapshot awaits.
 */
export class SnapshotClient {
  /** Refuses `WorkerUnavailable` when no worker polls the task queue (one check shared by concurrent creates). */
  private readonly requireWorkers: () => Promise<void>;

  constructor(private readonly options: SnapshotClientOptions) {
    this.requireWorkers = workerCheck(options.client, [options.taskQueue]);
  }

  /** ACTIVE VMs of an account in a region, labelled as the Create Snapshot dropdown shows them. */
  listEligibleVms(accountId: string, region: Region): EligibleVm[] {
    const parsedRegion = parseOrThrow(RegionSchema, region, 'InvalidRequest', 'region');
    return this.options.catalog
      .listVms({ accountId, region: parsedRegion, status: 'ACTIVE' })
      .map((vm) => ({ vm, label: formatVmChoice(vm) }));
  }

  /**
   * What a snapshot of the VM would hold from the account's credits: its estimated stored size priced for
   * MIN_COVERED_HOURS (see domain/billing.ts).
   */
  creditHold(accountId: string, vmId: string): { micros: number; text: string } {
    const account = this.options.catalog.getAccount(accountId);
    const vm = this.options.catalog.getVm(vmId);
    if (!account || !vm || vm.accountId !== accountId) {
      throw new SnapshotError('VmNotFound', `VM ${vmId} does not exist in account ${accountId}.`);
    }
    const { hold } = creditHoldFor(account, vm);
    return { micros: hold, text: `${formatMoney(hold, account.currency)} for ${MIN_COVERED_HOURS} h` };
  }

  /** A VM of the account, whatever its state: by id when `ref` starts like a VM id (`vm-`), else by name only. */
  findVm(accountId: string, ref: string): Vm | undefined {
    const byId = isIdOf('vm', ref);
    return this.options.catalog.listVms({ accountId }).find((vm) => (byId ? vm.id : vm.name) === ref);
  }

  /**
   * Starts a snapshot and returns once validation has accepted it, or throws its typed refusal: one
   * update-with-start call. The workflow id is derived from the account and the name, so concurrent and retried
   * requests for one name meet in one run: the one that started it gets validation's answer, one that repeats it
   * (same idempotency key and fields) the same snapshot, any other `SnapshotNameTaken` (`IdempotencyKeyReused` with
   * the same key). A retry after the snapshot ended is answered from the catalog's record of the key. Refuses
   * `WorkerUnavailable` (and starts nothing) when no worker polls the task queue.
   */
  async createSnapshot(input: CreateSnapshotRequest): Promise<StartedSnapshot> {
    const request = parseOrThrow(CreateSnapshotRequestSchema, input, undefined, 'request');
    // Without a worker the update would wait, silently, until one comes: refuse at once instead, starting nothing.
    await this.requireWorkers();
    const snapshotId = snapshotIdFrom(randomUUID());
    // The VM only labels the run in the Web UI; whether it may be snapshotted is validation's to say.
    const vm = this.options.catalog.getVm(request.vmId) ?? {
      id: request.vmId,
      name: request.vmId,
      flavor: 'unknown',
      region: request.region,
    };
    const start = {
      ...snapshotStartOptions({ snapshotId, request }, vm),
      taskQueue: this.options.taskQueue,
      // A concurrent request for the name joins the running workflow (its update handler tells the two apart); once
      // that run has ended, a new one starts and the catalog's reservation answers.
      workflowIdConflictPolicy: 'USE_EXISTING',
      workflowIdReusePolicy: 'ALLOW_DUPLICATE',
    } as const;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.options.client.workflow.executeUpdateWithStart(acceptedUpdate, {
          args: [{ snapshotId, request }],
          startWorkflowOperation: new WithStartWorkflowOperation<typeof snapshotWorkflow>('snapshotWorkflow', start),
        });
      } catch (error) {
        if (!joinedRefusedRun(error) || attempt === MAX_CREATE_ATTEMPTS) throw toSnapshotError(error);
        // The refused run it joined ends at once (it only records the refusal): wait for that, then start again.
        await this.options.client.workflow
          .getHandle(start.workflowId)
          .result()
          .catch(() => undefined);
      }
    }
  }

  /** A snapshot with its sizes and, while it runs, its live progress. */
  async getSnapshot(accountId: string, snapshotId: string): Promise<SnapshotRecord & { progress?: SnapshotProgress }> {
    const record = checkOwnSnapshot(this.options.catalog.getSnapshot(snapshotId), accountId, snapshotId);
    if (!isInFlight(record.status)) return record;
    const progress = await this.readProgress(
      record.id,
      this.options.client.workflow.getHandle(record.workflowId),
    ).catch(() => undefined);
    return progress ? { ...record, progress } : record;
  }

  listSnapshots(accountId: string, filter: { region?: Region; vmId?: string } = {}): SnapshotRecord[] {
    return this.options.catalog.listSnapshots({ accountId, ...filter });
  }

  /** The account's snapshots as listSnapshots gives them, those in flight with their live progress (getSnapshot). */
  async listSnapshotsLive(
    accountId: string,
    filter: { region?: Region } = {},
  ): Promise<(SnapshotRecord & { progress?: SnapshotProgress })[]> {
    return Promise.all(
      this.listSnapshots(accountId, filter).map(async (record) =>
        isInFlight(record.status) ? this.getSnapshot(accountId, record.id) : record,
      ),
    );
  }

  /**
   * Follows a snapshot until it ends, calling `onProgress` with each new reading. Resolves with the SUCCESS record;
   * rejects with a typed SnapshotError when the snapshot failed.
   */
  async watchProgress(
    started: StartedSnapshot,
    onProgress: (progress: SnapshotProgress) => void = () => undefined,
  ): Promise<SnapshotRecord> {
    const handle = this.options.client.workflow.getHandle<typeof snapshotWorkflow>(started.workflowId, started.runId);
    const result = handle.result();
    const outcome = await pollUntil(result, async () => {
      const progress = await this.readProgress(started.snapshotId, handle);
      if (progress) onProgress(progress);
    });
    // One last reading, so a watcher always sees the final SUCCESS or FAILED state: from the catalog, which the
    // workflow updated before it ended (a query now would make a worker replay the closed workflow).
    const record = this.options.catalog.getSnapshot(started.snapshotId);
    if (record) onProgress(finalReading(record));
    if (!outcome.ok) throw toSnapshotError(outcome.error);
    if (!record) throw new SnapshotError('SnapshotNotFound', `Snapshot ${started.snapshotId} is not in the catalog.`);
    return record;
  }

  /** Restores one disk of a SUCCESS snapshot to a raw image file on the worker's machine, reporting progress. */
  async restoreDisk(
    input: RestoreDiskRequest,
    onProgress: (progress: RestoreProgress) => void = () => undefined,
  ): Promise<{ bytesRestored: number }> {
    const request = parseOrThrow(RestoreDiskRequestSchema, input, 'InvalidRequest', 'restore request');
    const handle = await this.options.client.workflow.start<typeof restoreDiskWorkflow>('restoreDiskWorkflow', {
      workflowId: `restore/${request.snapshotId}/${request.diskName}/${randomUUID()}`,
      taskQueue: this.options.taskQueue,
      args: [request],
      staticSummary: `Restore disk ${request.diskName} of ${request.snapshotId}`,
    });
    const result = handle.result();
    const outcome = await pollUntil(result, async () => {
      const disk = (await this.pendingProgress(await handle.describe()))[0];
      if (disk) onProgress(restoreReading(disk, 0, disk.bytesTotal));
    });
    if (!outcome.ok) throw toSnapshotError(outcome.error);
    return outcome.value;
  }

  /**
   * Restores a SUCCESS snapshot, or an image, to a new VM in its region with the captured configuration; resolves
   * with the new VM once it is ACTIVE. A failed or cancelled restore leaves no VM behind.
   */
  async restoreVm(
    input: RestoreVmRequest,
    onProgress: (progress: RestoreProgress) => void = () => undefined,
  ): Promise<{ vm: Vm; bytesRestored: number }> {
    const request = parseOrThrow(RestoreVmRequestSchema, input, 'InvalidRequest', 'restore request');
    if (this.findVm(request.accountId, request.vmName)) {
      throw new SnapshotError(
        'InvalidVmName',
        `Account ${request.accountId} already has a VM named "${request.vmName}".`,
      );
    }
    const handle = await this.options.client.workflow.start<typeof restoreVmWorkflow>('restoreVmWorkflow', {
      workflowId: `restore-vm/${request.accountId}/${request.vmName}/${randomUUID()}`,
      taskQueue: this.options.taskQueue,
      args: [request],
      staticSummary: `Restore VM ${request.vmName} from ${'snapshotId' in request.source ? request.source.snapshotId : request.source.imageId}`,
    });
    const outcome = await pollUntil(handle.result(), async () => {
      const [state, description] = await Promise.all([handle.query(restoreStateQuery), handle.describe()]);
      const disk = (await this.pendingProgress(description))[0];
      onProgress(restoreReading(disk, state.finishedBytes, state.bytesTotal));
    });
    if (!outcome.ok) throw toSnapshotError(outcome.error);
    const vm = this.options.catalog.getVm(outcome.value.vmId)!;
    return { vm, bytesRestored: outcome.value.bytesRestored };
  }

  /**
   * Deletes a snapshot: at once from listings and billing; one in flight is cancelled first. Its stored data is
   * freed by the region's garbage collection, never while another snapshot or an image needs it. Idempotent.
   */
  async deleteSnapshot(accountId: string, snapshotId: string): Promise<void> {
    const snapshot = checkOwnSnapshot(this.options.catalog.getSnapshot(snapshotId), accountId, snapshotId);
    if (snapshot.status === 'DELETED') return;
    const handle = await this.options.client.workflow.start<typeof deleteSnapshotWorkflow>('deleteSnapshotWorkflow', {
      workflowId: deletionWorkflowId(snapshotId),
      taskQueue: this.options.taskQueue,
      args: [{ accountId, snapshotId, reason: 'user' }],
      workflowIdConflictPolicy: 'USE_EXISTING',
      workflowIdReusePolicy: 'ALLOW_DUPLICATE',
      staticSummary: `Delete snapshot "${snapshot.name}" (${snapshotId})`,
    });
    await handle.result().catch((error: unknown) => {
      throw toSnapshotError(error);
    });
  }

  /**
   * A running snapshot's progress: its stage from the SnapshotStatus search attribute, its figures from the heartbeat
   * details of the stage's pending activity. Undefined once the workflow has closed.
   */
  private async readProgress(
    snapshotId: string,
    handle: WorkflowHandle<typeof snapshotWorkflow>,
  ): Promise<SnapshotProgress | undefined> {
    const description = await handle.describe();
    if (description.status.name !== 'RUNNING') return undefined;
    const parsed = SnapshotStatusSchema.safeParse(description.typedSearchAttributes.get(SnapshotStatusKey));
    if (!parsed.success) return undefined;
    const status = parsed.data;
    const stage = (await this.pendingProgress(description)).find((p) => p.stage === status);
    const bytesDone = stage?.bytesDone ?? 0;
    const bytesTotal = stage?.bytesTotal ?? 0;
    const throughput = stage?.throughput ?? 0;
    return {
      snapshotId,
      status,
      bytesDone,
      bytesTotal,
      throughput,
      etaSeconds: etaSeconds(bytesTotal - bytesDone, throughput),
      failureType: null,
      failureReason: null,
    };
  }

  /** The progress each pending activity of a workflow last heartbeated (activities that have not yet are left out). */
  private async pendingProgress(description: WorkflowExecutionDescription): Promise<StageProgress[]> {
    const converter = this.options.client.options.loadedDataConverter;
    const readings: StageProgress[] = [];
    for (const activity of description.raw.pendingActivities ?? []) {
      const payloads = activity.heartbeatDetails?.payloads;
      if (!payloads?.length) continue;
      const details = await decodeFromPayloadsAtIndex<StageHeartbeat<unknown>>(converter, 0, payloads);
      if (details?.progress) readings.push(details.progress);
    }
    return readings;
  }

  /** Boot sources: the account's images, optionally of one region. */
  listImages(accountId: string, region?: Region): ImageRecord[] {
    return this.options.catalog.listImages({ accountId, region });
  }

  /** Makes a SUCCESS snapshot a boot image ("Create as Image" after the fact); returns the existing one if any. */
  async createImage(accountId: string, snapshotId: string, name?: string): Promise<ImageRecord> {
    const existing = this.options.catalog.listImages({ accountId, snapshotId })[0];
    if (existing) return existing;
    const snapshot = this.options.catalog.getSnapshot(snapshotId);
    const handle = await this.options.client.workflow.start<typeof createImageWorkflow>('createImageWorkflow', {
      workflowId: `create-image/${snapshotId}`,
      taskQueue: this.options.taskQueue,
      args: [{ accountId, snapshotId, imageId: imageIdFrom(randomUUID()), name: name ?? snapshot?.name ?? snapshotId }],
      workflowIdConflictPolicy: 'USE_EXISTING',
      workflowIdReusePolicy: 'ALLOW_DUPLICATE',
    });
    return handle.result().catch((error: unknown) => {
      throw toSnapshotError(error);
    });
  }

  /** Deletes an image; what it kept alive goes once its snapshot is deleted too. Idempotent. */
  async deleteImage(accountId: string, imageId: string): Promise<void> {
    const handle = await this.options.client.workflow.start<typeof deleteImageWorkflow>('deleteImageWorkflow', {
      workflowId: `delete-image/${imageId}/${randomUUID()}`,
      taskQueue: this.options.taskQueue,
      args: [{ accountId, imageId }],
    });
    await handle.result().catch((error: unknown) => {
      throw toSnapshotError(error);
    });
  }
}

/** Whether an `accepted` update failed because it joined a refused run (see JOINED_REFUSED_RUN). */
function joinedRefusedRun(error: unknown): boolean {
  for (let cause = error; cause instanceof Error; cause = cause.cause) {
    if (cause instanceof ApplicationFailure && cause.type === JOINED_REFUSED_RUN) return true;
  }
  return false;
}

/** Seconds left at the measured throughput; null when nothing was measured yet. */
function etaSeconds(bytesLeft: number, throughput: number): number | null {
  return throughput > 0 ? Math.ceil(bytesLeft / throughput) : null;
}

/** A restore reading: the disks finished before plus the current disk's heartbeated bytes. */
function restoreReading(disk: StageProgress | undefined, finishedBytes: number, bytesTotal: number): RestoreProgress {
  const bytesDone = finishedBytes + (disk?.bytesDone ?? 0);
  const throughput = disk?.throughput ?? 0;
  return {
    stage: 'RESTORING',
    bytesDone,
    bytesTotal,
    throughput,
    etaSeconds: etaSeconds(bytesTotal - bytesDone, throughput),
    done: false,
  };
}

/** The progress reading of a snapshot that has ended, from its record. */
function finalReading(record: SnapshotRecord): SnapshotProgress {
  const bytes = record.logicalBytes ?? 0;
  return {
    snapshotId: record.id,
    status: record.status,
    bytesDone: bytes,
    bytesTotal: bytes,
    throughput: 0,
    etaSeconds: null,
    failureType: record.failureType,
    failureReason: record.failureReason,
  };
}

/** Polls `tick` until `done` settles; a failed tick (e.g. the first query before the workflow ran) is skipped. */
async function pollUntil<T>(
  done: Promise<T>,
  tick: () => Promise<void>,
): Promise<{ ok: true; value: T } | { ok: false; error: unknown }> {
  const settled = done.then(
    (value) => ({ ok: true as const, value }),
    (error: unknown) => ({ ok: false as const, error }),
  );
  for (;;) {
    await tick().catch(() => undefined);
    const outcome = await Promise.race([
      settled,
      new Promise<null>((r) => setTimeout(() => r(null), PROGRESS_POLL_MS)),
    ]);
    if (outcome) return outcome;
  }
}

/** Turns a workflow failure into the typed error its failing activity raised (found down the cause chain). */
export function toSnapshotError(error: unknown): unknown {
  for (let cause = error; cause instanceof Error; cause = cause.cause) {
    if (cause instanceof ApplicationFailure && isSnapshotErrorType(cause.type)) {
      return new SnapshotError(cause.type, cause.message);
    }
  }
  return error;
}

function parseOrThrow<S extends z.ZodType>(
  schema: S,
  value: unknown,
  type: 'InvalidRequest' | undefined,
  what: string,
): z.output<S> {
  const parsed = schema.safeParse(value);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  const field = issue?.path.join('.') ?? '';
  const errorType =
    type ??
    (field === 'name' ? 'InvalidSnapshotName' : field === 'description' ? 'InvalidDescription' : 'InvalidRequest');
  throw new SnapshotError(errorType, `Invalid ${field || what}: ${issue?.message ?? 'malformed input'}`);
}
