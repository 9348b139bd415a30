import { Context } from '@temporalio/activity';
import type { StageProgress } from '../domain/model';

/**
 * What a data-stage activity heartbeats: its resume checkpoint and how far it has got. The server keeps only the
 * latest details of a running activity (no history event per heartbeat), so progress costs nothing in the workflow's
 * history whatever the disk size; clients read it from the pending activity (`describe()`), the Web UI shows it.
 */
export interface StageHeartbeat<Checkpoint> {
  checkpoint: Checkpoint;
  progress: StageProgress;
}

/**
 * Heartbeats a checkpoint with the stage's progress. Heartbeats reach the server at most once a second (the worker's
 * maxHeartbeatThrottleInterval), each carrying the latest details. Throughput counts only this attempt's bytes, so a
 * resumed attempt does not look faster than it is.
 */
export class StageReporter<Checkpoint> {
  private readonly context = Context.current();
  private readonly startedAt = Date.now();

  constructor(
    private readonly stage: StageProgress['stage'],
    private readonly bytesTotal: number,
    private readonly startBytes = 0,
  ) {}

  /** The checkpoint of the previous attempt, if this is a retry that heartbeated before. */
  static checkpoint<C>(): C | undefined {
    const details = Context.current().info.heartbeatDetails as StageHeartbeat<C> | undefined;
    return details?.checkpoint;
  }

  get signal(): AbortSignal {
    return this.context.cancellationSignal;
  }

  update(bytesDone: number, checkpoint: Checkpoint): void {
    const seconds = Math.max((Date.now() - this.startedAt) / 1000, 0.001);
    const progress: StageProgress = {
      stage: this.stage,
      bytesDone,
      bytesTotal: this.bytesTotal,
      throughput: Math.round((bytesDone - this.startBytes) / seconds),
    };
    const details: StageHeartbeat<Checkpoint> = { checkpoint, progress };
    this.context.heartbeat(details);
  }
}

/** Waits as long as needed to keep `bytes` read since `startedAt` under `maxBytesPerSecond`. */
export async function throttle(bytes: number, startedAt: number, maxBytesPerSecond: number): Promise<void> {
  if (maxBytesPerSecond <= 0) return;
  const aheadMs = (bytes / maxBytesPerSecond) * 1000 - (Date.now() - startedAt);
  if (aheadMs > 0) await Context.current().sleep(aheadMs);
}
