import type { temporal } from '@temporalio/proto';

type History = temporal.api.history.v1.IHistory;

/** What a workflow's history records of one activity: its options as scheduled, the attempt that ran last, and how it ended. */
export interface ActivityRecord {
  scheduled: temporal.api.history.v1.IActivityTaskScheduledEventAttributes;
  /** The last attempt (Temporal records the start of the last attempt only; earlier ones live in its `lastFailure`). */
  started: temporal.api.history.v1.IActivityTaskStartedEventAttributes;
  /** Whether the activity completed. */
  completed: boolean;
  /** The failure the activity ended with, if it failed. */
  failure?: temporal.api.failure.v1.IFailure;
}

/** Every run of activity `activityType` in the history, in order. */
export function activityRecords(history: History, activityType: string): ActivityRecord[] {
  const events = history.events ?? [];
  const byScheduledId = new Map<string, ActivityRecord>();
  const records: ActivityRecord[] = [];
  for (const event of events) {
    const scheduled = event.activityTaskScheduledEventAttributes;
    if (scheduled?.activityType?.name === activityType) {
      const record: ActivityRecord = { scheduled, started: {}, completed: false };
      byScheduledId.set(String(event.eventId), record);
      records.push(record);
    }
    const started = event.activityTaskStartedEventAttributes;
    const startedRecord = started && byScheduledId.get(String(started.scheduledEventId));
    if (startedRecord) startedRecord.started = started;
    const completed = event.activityTaskCompletedEventAttributes;
    const completedRecord = completed && byScheduledId.get(String(completed.scheduledEventId));
    if (completedRecord) completedRecord.completed = true;
    const failed = event.activityTaskFailedEventAttributes;
    const failedRecord = failed && byScheduledId.get(String(failed.scheduledEventId));
    if (failedRecord) failedRecord.failure = failed.failure ?? undefined;
  }
  return records;
}

/** The one run of `activityType` in the history (fails the test if there is none or several). */
export function onlyActivity(history: History, activityType: string): ActivityRecord {
  const records = activityRecords(history, activityType);
  expect(records).toHaveLength(1);
  return records[0]!;
}
