import { Context } from '@temporalio/activity';
import type { StageProgress } from '../domain/model';
import type { ProgressSink } from './deps';

/** Progress reaches the workflow at most this often; heartbeats are throttled by the SDK itself. */
const REPORT_INTERVAL_MS = 1000;

/**
 * Heartbeats a checkpoint and reports bytes done to the workflow. Throughput counts only this attempt's bytes, so a
 * resumed attempt does not look faster than it is.
 */
export class StageReporter<Checkpoint> {
  private readonly context = Context.current();
  private readonly startedAt = Date.now();
  private lastReport = 0;
  private readonly startBytes: number;

  constructor(
    private readonly sink: ProgressSink,
    private readonly stage: StageProgress['stage'],
    private readonly bytesTotal: number,
    startBytes = 0,
  ) {
    this.startBytes = startBytes;
  }

  /** The checkpoint of the previous attempt, if this is a retry that heartbeated before. */
  static checkpoint<C>(): C | undefined {
    return Context.current().info.heartbeatDetails as C | undefined;
  }

  get signal(): AbortSignal {
    return this.context.cancellationSignal;
  }

  update(bytesDone: number, checkpoint: Checkpoint, force = false): void {
    this.context.heartbeat(checkpoint);
    const now = Date.now();
    if (!force && now - this.lastReport < REPORT_INTERVAL_MS) return;
    this.lastReport = now;
    const seconds = Math.max((now - this.startedAt) / 1000, 0.001);
    const progress: StageProgress = {
      stage: this.stage,
      bytesDone,
      bytesTotal: this.bytesTotal,
      throughput: Math.round((bytesDone - this.startBytes) / seconds),
    };
    const workflowId = this.context.info.workflowExecution?.workflowId;
    if (!workflowId) return;
    // Progress is best effort: a lost report must never fail the stage.
    this.sink.report(workflowId, progress).catch((error: unknown) => {
      this.context.log.warn('progress report failed', { error: String(error) });
    });
  }
}

/** Waits as long as needed to keep `bytes` read since `startedAt` under `maxBytesPerSecond`. */
export async function throttle(bytes: number, startedAt: number, maxBytesPerSecond: number): Promise<void> {
  if (maxBytesPerSecond <= 0) return;
  const aheadMs = (bytes / maxBytesPerSecond) * 1000 - (Date.now() - startedAt);
  if (aheadMs > 0) await Context.current().sleep(aheadMs);
}
