import type { temporal } from '@temporalio/proto';
import { defaultPayloadConverter } from '@temporalio/common';

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

/** What a workflow's history records of one local activity: its marker's data (type, last attempt) and its failure. */
export interface LocalActivityRecord {
  activityType: string;
  /** The attempt the marker records: the last one that ran. */
  attempt: number;
  failure?: temporal.api.failure.v1.IFailure;
}

/** Every local activity of `activityType` the history records (one marker each, written when it ended), in order. */
export function localActivityRecords(history: History, activityType: string): LocalActivityRecord[] {
  return (history.events ?? []).flatMap((event) => {
    const marker = event.markerRecordedEventAttributes;
    const data = marker?.markerName === 'core_local_activity' ? marker.details?.data?.payloads?.[0] : undefined;
    if (!data) return [];
    const fields = defaultPayloadConverter.fromPayload<{ activity_type: string; attempt: number }>(data);
    if (fields.activity_type !== activityType) return [];
    return [{ activityType, attempt: fields.attempt, failure: marker?.failure ?? undefined }];
  });
}
