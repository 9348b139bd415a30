import { defineQuery, defineUpdate } from '@temporalio/workflow';
import type { ValidCreateSnapshotRequest } from '../domain/requests';

/** A create request as it asks its workflow to accept it: the id it chose and what it asks for. */
export interface AcceptanceRequest {
  snapshotId: string;
  request: ValidCreateSnapshotRequest;
}

/** An accepted request: the snapshot it stands for and the workflow that makes (or made) it. */
export interface Acceptance {
  snapshotId: string;
  workflowId: string;
  /**
   * The run that makes the snapshot, when it is the one that answered: a watcher follows that run, not whichever run
   * of the workflow id is the latest (a later request with the same name starts a new run once this one ended).
   */
  runId?: string;
}

/**
 * Sent with update-with-start by every create request: resolves once validation has reserved the name, the VM slot
 * and the credit hold, or fails with the typed refusal. A request that joins a run another request started is the
 * same request only with the same idempotency key and fields (else `IdempotencyKeyReused` or `SnapshotNameTaken`).
 */
export const acceptedUpdate = defineUpdate<Acceptance, [AcceptanceRequest]>('accepted');

/**
 * The `accepted` update's failure type when the request joined a run that validation refused (a concurrent request
 * for the same name with a rule violation): the name is free, so the client starts the request again once that run
 * has ended. Never reaches a caller.
 */
export const JOINED_REFUSED_RUN = 'JoinedRefusedRun';

/**
 * What a restore workflow knows of its progress: the bytes of the disks it has finished and of all its disks. The
 * disk being written reports its own bytes in its activity's heartbeat details.
 */
export interface RestoreState {
  finishedBytes: number;
  bytesTotal: number;
  done: boolean;
}

/** Progress of a restore workflow, without the current disk's bytes (see RestoreState). */
export const restoreStateQuery = defineQuery<RestoreState>('restoreState');

/** What a scheduled run did for one VM of its policy. */
export interface VmRunOutcome {
  vmId: string;
  vmName: string;
  outcome: 'snapshot' | 'skipped' | 'failed';
  snapshotName?: string;
  snapshotId?: string;
  /** Why it was skipped or failed. */
  reason?: string;
  /** How long the run waited for the VM's load to drop. */
  waitedSeconds: number;
  /** Names of the snapshots retention deleted after this one succeeded. */
  expired: string[];
}

/** A scheduled run so far: the VMs it finished with and every decision it made, oldest first. */
export interface ScheduledRunState {
  policy: string;
  scheduledAt: string;
  vms: VmRunOutcome[];
  decisions: string[];
}

export const scheduledRunQuery = defineQuery<ScheduledRunState>('scheduledRun');
