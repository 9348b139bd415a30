import type { MetricMeter } from '@temporalio/common';
import type { ActivityInterceptorsFactory } from '@temporalio/worker';
import { Runtime } from '@temporalio/worker';
import type { Hypervisor } from '../platform/ports';

/**
 * The worker's Prometheus endpoint: the SDK's own runtime metrics (task slots, poll and schedule latencies, sticky
 * cache, ...) and the service's metrics below, all served by the SDK's core at `bindAddress` (`host:port`). Must run
 * before the process makes its first Temporal connection: the runtime is created once, by the first connection.
 */
export function installPrometheusRuntime(bindAddress: string): void {
  Runtime.install({ telemetryOptions: { metrics: { prometheus: { bindAddress } } } });
}

/** A snapshot workflow's outcome as the activities that end it report it. */
const OUTCOME_ACTIVITIES = {
  /** Returns the SUCCESS record once every chunk was re-read and re-hashed. */
  verifySnapshot: 'success',
  /** Called by the workflow's compensation with the failure's type as its second argument. */
  markSnapshotFailed: 'failed',
} as const;

/** The bytes each data stage reports in its result, and which way they went. */
const BYTES_OF: Record<string, (result: unknown) => { direction: 'read' | 'stored' | 'restored'; bytes: number }> = {
  captureSnapshot: (result) => ({ direction: 'read', bytes: (result as { bytesRead: number }).bytesRead }),
  compressSnapshot: (result) => ({ direction: 'stored', bytes: (result as { addedBytes: number }).addedBytes }),
  restoreSnapshotDisk: (result) => ({
    direction: 'restored',
    bytes: (result as { bytesRestored: number }).bytesRestored,
  }),
};

/**
 * The service's metrics, on the SDK's metric meter (so on the worker's Prometheus endpoint beside the SDK's own, and
 * named like them: counters without a `_total` suffix), each tagged with the task queue:
 *
 * - `snap_snapshots_ended{outcome, failure_type}`: snapshots that ended, by outcome (`success`, `failed`) and
 *   failure type (`none` on success);
 * - `snap_stage_bytes{stage, direction}`: bytes read by capture, stored (compressed, new to the repository) by
 *   compression and written by restore;
 * - `snap_stage_duration{stage, outcome}` (ms): how long each activity attempt ran, by activity and `completed` or
 *   `failed`;
 * - `snap_freeze_duration` (ms): how long each guest was frozen, from the freeze request to the thaw's answer.
 *
 * The activity metrics come from one activity interceptor, from each activity's arguments and result, so no activity
 * knows about metrics; the freeze duration from a wrapper of the hypervisor port.
 */
export class WorkerMetrics {
  private readonly snapshots;
  private readonly stageBytes;
  private readonly stageDuration;
  private readonly freezeDuration;
  /** When each frozen VM's freeze was requested (performance.now()), by VM id. */
  private readonly frozenAt = new Map<string, number>();

  /** `taskQueue` tags every series, as the SDK tags its own. */
  constructor(taskQueue: string, runtimeMeter: MetricMeter = Runtime.instance().metricMeter) {
    const meter = runtimeMeter.withTags({ task_queue: taskQueue });
    this.snapshots = meter.createCounter(
      'snap_snapshots_ended',
      '',
      'Snapshots that ended, by outcome and failure type',
    );
    this.stageBytes = meter.createCounter('snap_stage_bytes', 'bytes', 'Bytes read, stored or restored per stage');
    this.stageDuration = meter.createHistogram('snap_stage_duration', 'int', 'ms', 'Activity attempt durations');
    this.freezeDuration = meter.createHistogram('snap_freeze_duration', 'int', 'ms', 'Guest freeze durations');
  }

  /** The activity interceptor that records outcomes, bytes and durations (for `Worker.create`'s `interceptors`). */
  readonly activityInterceptor: ActivityInterceptorsFactory = (context) => ({
    inbound: {
      execute: async (input, next) => {
        const stage = context.info.activityType;
        const started = performance.now();
        let outcome = 'failed';
        try {
          const result = await next(input);
          outcome = 'completed';
          this.recordResult(stage, input.args, result);
          return result;
        } finally {
          this.stageDuration.record(Math.round(performance.now() - started), { stage, outcome });
        }
      },
    },
  });

  /** The hypervisor, timing each guest's freeze from `freeze` to its first `thaw`; every other call passes through. */
  timeFreezes(hypervisor: Hypervisor): Hypervisor {
    const freeze: Hypervisor['freeze'] = async (vm, lease) => {
      // From the request, as the snapshot's own frozenMs: the guest's writes block while the freeze syncs.
      const requestedAt = performance.now();
      await hypervisor.freeze(vm, lease);
      this.frozenAt.set(vm.id, requestedAt);
    };
    const thaw: Hypervisor['thaw'] = async (vm) => {
      await hypervisor.thaw(vm);
      const frozenAt = this.frozenAt.get(vm.id);
      if (frozenAt === undefined) return;
      this.frozenAt.delete(vm.id);
      this.freezeDuration.record(Math.round(performance.now() - frozenAt));
    };
    return new Proxy(hypervisor, {
      get(target, property) {
        if (property === 'freeze') return freeze;
        if (property === 'thaw') return thaw;
        const value: unknown = Reflect.get(target, property);
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
  }

  private recordResult(stage: string, args: unknown[], result: unknown): void {
    const outcome = OUTCOME_ACTIVITIES[stage as keyof typeof OUTCOME_ACTIVITIES];
    if (outcome === 'success') this.snapshots.add(1, { outcome, failure_type: 'none' });
    if (outcome === 'failed') this.snapshots.add(1, { outcome, failure_type: String(args[1]) });
    const moved = BYTES_OF[stage]?.(result);
    if (moved) this.stageBytes.add(moved.bytes, { stage, direction: moved.direction });
  }
}
