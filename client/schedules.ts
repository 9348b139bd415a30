import type { Client, ScheduleOptions } from '@temporalio/client';
import { ScheduleAlreadyRunning } from '@temporalio/client';

/** Creates a Schedule unless one with its id exists (idempotent; an existing Schedule is left as it is). */
export async function createScheduleIfMissing(client: Client, options: ScheduleOptions): Promise<void> {
  try {
    await client.schedule.create(options);
  } catch (error) {
    if (!(error instanceof ScheduleAlreadyRunning)) throw error;
  }
}
