import type { DateTime } from 'luxon';
import { z } from 'zod';
import { inTimeZone } from './windows';

const KeepCountSchema = z.number().int().min(0).default(0);

/** How many snapshots a policy keeps; the rules add up, as in restic's `forget`. */
export const RetentionSchema = z
  .object({
    /** The newest snapshots, whatever their age. At least one, so a policy never expires everything. */
    keepLast: z.number().int().min(1, 'must keep at least the last snapshot (keepLast >= 1)'),
    /** The newest snapshot of each of the most recent days, ISO weeks and months that have one. */
    keepDaily: KeepCountSchema,
    keepWeekly: KeepCountSchema,
    keepMonthly: KeepCountSchema,
  })
  .strict();
export type Retention = z.infer<typeof RetentionSchema>;

export interface RetentionResult {
  /** Kept snapshots, newest first, each with why: "last", "daily 2026-11-25", "weekly 2026-W48", "monthly 2026-11". */
  keep: { id: string; reasons: string[] }[];
  /** Ids of the other snapshots, newest first. */
  expire: string[];
}

/**
 * Which snapshots `retention` keeps, with restic `forget` semantics: going from newest to oldest, `keepLast` keeps the
 * first N; `keepDaily` keeps the newest snapshot of each of the D most recent calendar days (in `timeZone`) that have
 * a snapshot, and `keepWeekly` (ISO weeks) and `keepMonthly` the same per week and month. Input order does not matter;
 * snapshots created at the same instant are ordered by id. Throws a `RangeError` for an unknown time zone.
 */
export function selectRetained(
  snapshots: readonly { id: string; createdAt: Date }[],
  retention: Retention,
  timeZone: string,
): RetentionResult {
  const periods: { count: number; bucket: (local: DateTime<true>) => string; last?: string }[] = [
    { count: retention.keepDaily, bucket: (local) => `daily ${local.toISODate()}` },
    { count: retention.keepWeekly, bucket: (local) => `weekly ${local.toISOWeekDate().slice(0, 8)}` },
    { count: retention.keepMonthly, bucket: (local) => `monthly ${local.toISODate().slice(0, 7)}` },
  ];
  const newestFirst = [...snapshots].sort(
    (a, b) => b.createdAt.getTime() - a.createdAt.getTime() || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
  );
  const result: RetentionResult = { keep: [], expire: [] };
  for (const [index, { id, createdAt }] of newestFirst.entries()) {
    const local = inTimeZone(createdAt, timeZone);
    const reasons = index < retention.keepLast ? ['last'] : [];
    for (const period of periods) {
      const bucket = period.bucket(local);
      // The newest snapshot of a period is the first one seen in it; each new period uses up one of the count.
      if (period.count > 0 && bucket !== period.last) {
        period.count--;
        period.last = bucket;
        reasons.push(bucket);
      }
    }
    if (reasons.length > 0) result.keep.push({ id, reasons });
    else result.expire.push(id);
  }
  return result;
}
