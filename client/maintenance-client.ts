import { randomUUID } from 'node:crypto';
import type { Client } from '@temporalio/client';
import { ScheduleOverlapPolicy } from '@temporalio/client';
import type { GcResult } from '../dataplane';
import { REGIONS } from '../domain/model';
import type { Region } from '../domain/model';
import type { garbageCollectionWorkflow, reverifyWorkflow } from '../workflows';
import type { ReverifyReport } from '../workflows/maintenance';
import { createScheduleIfMissing } from './schedules';

/** Chunks younger than this are never collected, whatever references them (an in-flight snapshot's margin). */
export const DEFAULT_GC_GRACE_MINUTES = 60;
/** Snapshots verified within this many days are not re-verified. */
export const DEFAULT_REVERIFY_DAYS = 7;

/**
 * Repository maintenance: garbage collection and re-verification, each a workflow, each run daily per region by a
 * Temporal Schedule (`maintenance/gc/<REGION>`, `maintenance/reverify/<REGION>`), and runnable on demand.
 */
export class MaintenanceClient {
  constructor(private readonly options: { client: Client; taskQueue: string }) {}

  /** Creates the daily Schedules that do not exist yet (idempotent; the worker calls it at start). */
  async ensureSchedules(): Promise<void> {
    for (const region of REGIONS) {
      await this.ensure(`maintenance/gc/${region}`, 3, 'garbageCollectionWorkflow', [
        { region, graceMinutes: DEFAULT_GC_GRACE_MINUTES },
      ]);
      await this.ensure(`maintenance/reverify/${region}`, 4, 'reverifyWorkflow', [
        { region, olderThanDays: DEFAULT_REVERIFY_DAYS },
      ]);
    }
  }

  async collectGarbage(region: Region, graceMinutes = DEFAULT_GC_GRACE_MINUTES): Promise<GcResult> {
    return this.options.client.workflow.execute<typeof garbageCollectionWorkflow>('garbageCollectionWorkflow', {
      workflowId: `gc/${region}/${randomUUID()}`,
      taskQueue: this.options.taskQueue,
      args: [{ region, graceMinutes }],
      staticSummary: `Garbage collection of ${region}`,
    });
  }

  async reverify(region: Region, olderThanDays = DEFAULT_REVERIFY_DAYS): Promise<ReverifyReport> {
    return this.options.client.workflow.execute<typeof reverifyWorkflow>('reverifyWorkflow', {
      workflowId: `reverify/${region}/${randomUUID()}`,
      taskQueue: this.options.taskQueue,
      args: [{ region, olderThanDays }],
      staticSummary: `Re-verification of ${region}`,
    });
  }

  private async ensure(scheduleId: string, hour: number, workflowType: string, args: unknown[]): Promise<void> {
    await createScheduleIfMissing(this.options.client, {
      scheduleId,
      spec: { calendars: [{ hour, minute: 30 }], timezone: 'UTC', jitter: 10 * 60_000 },
      action: {
        type: 'startWorkflow',
        workflowType,
        taskQueue: this.options.taskQueue,
        workflowId: scheduleId,
        args,
        staticSummary: `Daily ${scheduleId.split('/').slice(1).join(' of ')}`,
      },
      policies: { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: 60 * 60_000 },
    });
  }
}
