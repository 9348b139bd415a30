import { defineQuery, defineSignal } from '@temporalio/workflow';
import type { SnapshotProgress, StageProgress } from '../domain/model';

/** Live progress of a snapshot workflow: stage, bytes done/total, throughput and ETA. */
export const snapshotProgressQuery = defineQuery<SnapshotProgress>('progress');

/** Live progress of a restore workflow. */
export const restoreProgressQuery = defineQuery<StageProgress & { etaSeconds: number | null; done: boolean }>(
  'progress',
);

/** Sent by a running activity to its own workflow, at most about once a second. */
export const stageProgressSignal = defineSignal<[StageProgress]>('stageProgress');

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
