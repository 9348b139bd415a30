import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import type { z } from 'zod';
import { MIN_COVERED_HOURS, formatMoney } from '../domain/billing';
import { SnapshotError, isSnapshotErrorType } from '../domain/errors';
import { isIdOf } from '../domain/ids';
import type { ImageRecord, Region, SnapshotProgress, SnapshotRecord, StageProgress, Vm } from '../domain/model';
import { RegionSchema, isInFlight } from '../domain/model';
import type { CreateSnapshotRequest, RestoreDiskRequest, RestoreVmRequest } from '../domain/requests';
import { CreateSnapshotRequestSchema, RestoreDiskRequestSchema, RestoreVmRequestSchema } from '../domain/requests';
import {
  checkAccount,
  checkCredits,
  checkOwnSnapshot,
  checkSnapshotRequest,
  creditHoldFor,
  formatVmChoice,
} from '../domain/rules';
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
import { restoreProgressQuery, snapshotProgressQuery } from '../workflows/messages';
import { snapshotStartOptions } from '../workflows/start-options';

export interface SnapshotClientOptions {
  client: Client;
  catalog: Catalog;
  taskQueue: string;
}

/** A snapshot that was accepted: its id and the workflow that makes it. */
export interface StartedSnapshot {
  snapshotId: string;
  workflowId: string;
}

export interface EligibleVm {
  vm: Vm;
  /** `my-vm - H100-SXM5-80GB (CANADA-1)` */
  label: string;
}

/** Progress of a restore: bytes written over all its disks, throughput and ETA. */
export type RestoreProgress = StageProgress & { etaSeconds: number | null; done: boolean };

/** Message shown when a region has no ACTIVE VM (create is refused with the same words). */
export const NO_ACTIVE_VMS = 'No active VMs available';

/**
 * How often a watcher reads a running workflow's progress. Each reading is a query (it reaches the worker through the
 * server and costs a few milliseconds of CPU on each), and a snapshot of a large disk runs for many minutes: once a
 * second keeps a progress bar live without taxing a busy worker.
 */
const PROGRESS_POLL_MS = 1000;
/** How often createSnapshot checks whether validation has accepted the request (it answers once it has). */
const ACCEPTANCE_POLL_MS = 125;

/**
 * The typed client: what the CLI (and any program) uses to create, inspect and restore snapshots. Requests are
 * parsed with zod and pre-checked against the catalog for fast feedback; the workflow's validation re-checks them.
 */
export class SnapshotClient {
  constructor(private readonly options: SnapshotClientOptions) {}

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
   * Starts a snapshot and returns once the request is accepted. The workflow id is derived from the account and the
   * name, so retrying the same request returns the snapshot already being made instead of starting a second one.
   */
  async createSnapshot(input: CreateSnapshotRequest): Promise<StartedSnapshot> {
    const request = parseOrThrow(CreateSnapshotRequestSchema, input, undefined, 'request');
    checkAccount(request.accountId, this.options.catalog.getAccount(request.accountId));
    if (this.listEligibleVms(request.accountId, request.region).length === 0) {
      throw new SnapshotError('NoActiveVms', `${NO_ACTIVE_VMS} in ${request.region}.`);
    }
    const vm = checkSnapshotRequest(request, {
      account: this.options.catalog.getAccount(request.accountId),
      vm: this.options.catalog.getVm(request.vmId),
    });
    const catalog = this.options.catalog;
    const sameName = catalog.findSnapshotByName(request.accountId, request.name);
    if (sameName) {
      if (request.idempotencyKey && sameName.idempotencyKey === request.idempotencyKey) {
        return { snapshotId: sameName.id, workflowId: sameName.workflowId };
      }
      throw nameTaken(request.name, sameName.id);
    }
    const inFlight = catalog.listSnapshots({ vmId: vm.id }).find((s) => isInFlight(s.status));
    if (inFlight) {
      throw new SnapshotError(
        'SnapshotInProgress',
        `VM ${vm.name} already has a snapshot in progress ("${inFlight.name}"); wait for it to finish.`,
      );
    }
    checkCredits(catalog.getAccount(request.accountId)!, vm, catalog.heldCredits(request.accountId));

    const snapshotId = `snap-${randomUUID()}`;
    // Identifies this request among concurrent ones for the same name: only the one whose workflow started wins.
    const requestKey = request.idempotencyKey ?? snapshotId;
    let handle: WorkflowHandle<typeof snapshotWorkflow>;
    try {
      handle = await this.options.client.workflow.start<typeof snapshotWorkflow>('snapshotWorkflow', {
        ...snapshotStartOptions({ snapshotId, request }, vm, requestKey),
        taskQueue: this.options.taskQueue,
        // A retried request joins the running workflow; the catalog's reservation decides name uniqueness after that.
        workflowIdConflictPolicy: 'USE_EXISTING',
        workflowIdReusePolicy: 'ALLOW_DUPLICATE',
      });
    } catch (error) {
      if (error instanceof WorkflowExecutionAlreadyStartedError) throw nameTaken(request.name);
      throw error;
    }
    const { memo } = await handle.describe();
    if (memo?.requestKey !== requestKey) throw nameTaken(request.name, memo?.snapshotId as string | undefined);
    const started = { snapshotId: memo.snapshotId as string, workflowId: handle.workflowId };
    await this.waitUntilAccepted(handle);
    return started;
  }

  /**
   * Waits until validation has reserved the name, the VM slot and the credit hold (or failed): `createSnapshot`
   * reports rule violations, including those only the authoritative check can see under races, to its caller.
   */
  private async waitUntilAccepted(handle: WorkflowHandle<typeof snapshotWorkflow>): Promise<void> {
    // Polls instead of awaiting the result, so no long poll is left open once the request is accepted.
    for (;;) {
      const progress = await handle.query(snapshotProgressQuery).catch(() => undefined);
      if (progress && progress.status !== 'VALIDATING' && progress.status !== 'FAILED') return;
      const { status } = await handle.describe();
      if (status.name !== 'RUNNING') {
        await handle.result().catch((error: unknown) => {
          throw toSnapshotError(error);
        });
        return;
      }
      await sleep(ACCEPTANCE_POLL_MS);
    }
  }

  /** A snapshot with its sizes and, while it runs, its live progress. */
  async getSnapshot(accountId: string, snapshotId: string): Promise<SnapshotRecord & { progress?: SnapshotProgress }> {
    const record = checkOwnSnapshot(this.options.catalog.getSnapshot(snapshotId), accountId, snapshotId);
    if (!isInFlight(record.status)) return record;
    const progress = await this.options.client.workflow
      .getHandle(record.workflowId)
      .query(snapshotProgressQuery)
      .catch(() => undefined);
    return progress ? { ...record, progress } : record;
  }

  listSnapshots(accountId: string, filter: { region?: Region; vmId?: string } = {}): SnapshotRecord[] {
    return this.options.catalog.listSnapshots({ accountId, ...filter });
  }

  /**
   * Follows a snapshot until it ends, calling `onProgress` with each new reading. Resolves with the SUCCESS record;
   * rejects with a typed SnapshotError when the snapshot failed.
   */
  async watchProgress(
    started: StartedSnapshot,
    onProgress: (progress: SnapshotProgress) => void = () => undefined,
  ): Promise<SnapshotRecord> {
    const handle = this.options.client.workflow.getHandle<typeof snapshotWorkflow>(started.workflowId);
    const result = handle.result();
    const outcome = await pollUntil(result, async () => onProgress(await handle.query(snapshotProgressQuery)));
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
    const outcome = await pollUntil(result, async () => onProgress(await handle.query(restoreProgressQuery)));
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
    const outcome = await pollUntil(handle.result(), async () => onProgress(await handle.query(restoreProgressQuery)));
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
      args: [{ accountId, snapshotId, imageId: `img-${randomUUID()}`, name: name ?? snapshot?.name ?? snapshotId }],
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

function nameTaken(name: string, existingId?: string): SnapshotError {
  return new SnapshotError(
    'SnapshotNameTaken',
    `A snapshot named "${name}" already exists in this account${existingId ? ` (${existingId})` : ''}; ` +
      'names are unique across all regions, ignoring case. Choose another name.',
  );
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
