import { DateTime, IANAZone } from 'luxon';
import { z } from 'zod';

export const WEEKDAYS = ['MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT', 'SUN'] as const;
export type Weekday = (typeof WEEKDAYS)[number];

/** An IANA time zone name such as `Europe/Oslo`; luxon's offsets (and `system`/`local`) are refused. */
export const TimeZoneSchema = z
  .string()
  .refine((zone) => IANAZone.isValidZone(zone), { error: (issue) => `unknown time zone "${String(issue.input)}"` });

const TimeOfDaySchema = z.string().regex(/^([01]\d|2[0-3]):[0-5]\d$/, 'must be a 24-hour time "HH:MM"');

/**
 * A recurring window of low activity, in wall-clock time of `timeZone`: it opens at `start` on each of `days` and
 * closes at the next `end`; an `end` before `start` (22:00–02:00) closes on the following day.
 */
export const LowActivityWindowSchema = z
  .object({
    start: TimeOfDaySchema,
    end: TimeOfDaySchema,
    /** The days on which the window opens. */
    days: z
      .array(z.enum(WEEKDAYS))
      .min(1, 'must name at least one day')
      .refine((days) => new Set(days).size === days.length, { message: 'must not repeat a day' })
      .default(() => [...WEEKDAYS]),
    timeZone: TimeZoneSchema,
  })
  .strict()
  .refine((window) => window.start !== window.end, { message: 'window of zero length', path: ['end'] });
export type LowActivityWindow = z.infer<typeof LowActivityWindowSchema>;

export interface WindowInstance {
  opensAt: Date;
  closesAt: Date;
}

/** `instant` as a luxon date-time in `timeZone`; throws a `RangeError` for an unknown zone or an invalid date. */
export function inTimeZone(instant: Date, timeZone: string): DateTime<true> {
  const zone = IANAZone.create(timeZone);
  if (!zone.isValid) throw new RangeError(`unknown time zone "${timeZone}"`);
  const local = DateTime.fromJSDate(instant, { zone });
  if (!local.isValid) throw new RangeError('invalid date');
  return local;
}

/**
 * The instant of wall-clock `time` ("HH:MM") on the calendar date of `date` in `zone`. A time skipped by a
 * spring-forward change moves forward to the first valid instant (the moment of the change); a time repeated by a
 * fall-back change takes the earlier occurrence. Both are resolved here because luxon alone shifts a skipped time by
 * the length of the gap (02:30 becomes 03:30) and resolves a repeated one by the offset in force at the current time.
 */
function wallClock(date: DateTime, time: string, zone: string): DateTime {
  const [hour, minute] = time.split(':').map(Number);
  const resolved = DateTime.fromObject({ year: date.year, month: date.month, day: date.day, hour, minute }, { zone });
  if (resolved.hour !== hour || resolved.minute !== minute) {
    // Skipped: luxon placed it after the gap by the gap's length; walk back to the change (at most the gap's length).
    let firstValid = resolved;
    while (firstValid.minus({ minutes: 1 }).offset === resolved.offset) firstValid = firstValid.minus({ minutes: 1 });
    return firstValid;
  }
  // One offset for most times, two for a repeated one (never none).
  return DateTime.min(...resolved.getPossibleOffsets())!;
}

/**
 * The instance opening on the calendar date of `date` (any zone; only its year, month and day count), or undefined
 * when the window does not open that day or a clock change leaves it no time at all.
 */
function instanceOn(window: LowActivityWindow, date: DateTime): WindowInstance | undefined {
  if (!window.days.includes(WEEKDAYS[date.weekday - 1]!)) return undefined;
  const opensAt = wallClock(date, window.start, window.timeZone);
  const closesAt = wallClock(window.end < window.start ? date.plus({ days: 1 }) : date, window.end, window.timeZone);
  return closesAt > opensAt ? { opensAt: opensAt.toJSDate(), closesAt: closesAt.toJSDate() } : undefined;
}

/** The local calendar date of `instant` in the window's zone, as midnight UTC so that adding days is plain. */
function localDate(window: LowActivityWindow, instant: Date): DateTime {
  return inTimeZone(instant, window.timeZone).setZone('utc', { keepLocalTime: true }).startOf('day');
}

/**
 * The instance of `window` with `opensAt <= instant < closesAt`, or undefined outside the window.
 *
 * Times are wall-clock times in the window's zone. On a spring-forward day a start or end that does not exist moves
 * forward to the first valid instant; on a fall-back day an ambiguous one takes the earlier occurrence. So
 * 02:00–05:00 Europe/Oslo lasts 3 h on most days, 2 h on 2026-03-29 (03:00–05:00 CEST) and 4 h on 2026-10-25
 * (02:00 CEST–05:00 CET); a window lying wholly inside a skipped hour does not open that day.
 */
export function windowContaining(window: LowActivityWindow, instant: Date): WindowInstance | undefined {
  const today = localDate(window, instant);
  // A window that opened yesterday may still be open if it crosses midnight.
  return [today, today.minus({ days: 1 })]
    .map((date) => instanceOn(window, date))
    .find((instance) => instance && instance.opensAt <= instant && instant < instance.closesAt);
}

/** The first instance of `window` opening strictly after `after`; same time rules as `windowContaining`. */
export function nextWindowOpening(window: LowActivityWindow, after: Date): WindowInstance {
  const today = localDate(window, after);
  // From yesterday (a start moved past midnight by a clock change) through two weeks: one week covers every opening
  // day, the second a day that a clock change left without a window.
  for (let days = -1; days <= 14; days++) {
    const instance = instanceOn(window, today.plus({ days }));
    if (instance && instance.opensAt > after) return instance;
  }
  throw new RangeError(`window ${formatWindow(window)} never opens`);
}

/**
 * Openings in the `days` days from `from` that are not at the window's wall-clock start, because a spring-forward
 * change skipped that time (02:00 Europe/Oslo on 2027-03-28 opens at 03:00 CEST). A calendar that fires at the start
 * time never fires on those days; these are the extra fire times it needs.
 */
export function shiftedOpenings(window: LowActivityWindow, from: Date, days: number): Date[] {
  const first = localDate(window, from);
  const zone = IANAZone.create(window.timeZone);
  const hour = 60 * 60 * 1000;
  const shifted: Date[] = [];
  for (let day = 0; day < days; day++) {
    // Most days have no clock change anywhere near them (any UTC offset is within ±14 h): skip them cheaply.
    const midnight = first.toMillis() + day * 24 * hour;
    if (zone.offset(midnight - 14 * hour) === zone.offset(midnight + 38 * hour)) continue;
    const instance = instanceOn(window, first.plus({ days: day }));
    if (instance && inTimeZone(instance.opensAt, window.timeZone).toFormat('HH:mm') !== window.start) {
      shifted.push(instance.opensAt);
    }
  }
  return shifted;
}

/** A short human description: "02:00–05:00 Europe/Oslo, Mon–Sun", "22:00–02:00 UTC, Mon, Wed, Fri". */
export function formatWindow(window: LowActivityWindow): string {
  return `${window.start}–${window.end} ${window.timeZone}, ${formatDays(window.days)}`;
}

/** Days in week order; runs of three or more days as a range ("Mon–Fri, Sun"). */
function formatDays(days: readonly Weekday[]): string {
  const label = (day: Weekday) => day.charAt(0) + day.slice(1).toLowerCase();
  const runs: Weekday[][] = [];
  let previous = -2;
  for (const [index, day] of WEEKDAYS.entries()) {
    if (!days.includes(day)) continue;
    if (index === previous + 1) runs.at(-1)!.push(day);
    else runs.push([day]);
    previous = index;
  }
  return runs
    .flatMap((run) => (run.length >= 3 ? [`${label(run[0]!)}–${label(run.at(-1)!)}`] : run.map(label)))
    .join(', ');
}
