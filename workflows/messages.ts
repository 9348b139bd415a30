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
