import { Settings } from 'luxon';
import {
  LowActivityWindowSchema,
  WEEKDAYS,
  formatWindow,
  nextWindowOpening,
  shiftedOpenings,
  windowContaining,
} from '../../domain/windows';
import type { LowActivityWindow, WindowInstance } from '../../domain/windows';

const at = (iso: string) => new Date(iso);
const instance = (opensAt: string, closesAt: string): WindowInstance => ({
  opensAt: at(opensAt),
  closesAt: at(closesAt),
});
const window = (input: Partial<LowActivityWindow>): LowActivityWindow =>
  LowActivityWindowSchema.parse({ start: '02:00', end: '05:00', timeZone: 'Europe/Oslo', ...input });

function issues(input: unknown): string[] {
  return LowActivityWindowSchema.safeParse(input).error?.issues.map((issue) => issue.message) ?? [];
}

describe('the window schema', () => {
  test('defaults the days to all seven', () => {
    expect(window({}).days).toEqual([...WEEKDAYS]);
  });

  test('refuses an unknown time zone by name', () => {
    expect(issues({ start: '02:00', end: '05:00', timeZone: 'Mars/Base' })).toEqual(['unknown time zone "Mars/Base"']);
  });

  test('refuses a window of zero length', () => {
    expect(issues({ start: '02:00', end: '02:00', timeZone: 'UTC' })).toEqual(['window of zero length']);
  });

  test('refuses repeated days, no days and unknown keys', () => {
    expect(issues({ start: '02:00', end: '05:00', timeZone: 'UTC', days: ['MON', 'MON'] })).toEqual([
      'must not repeat a day',
    ]);
    expect(issues({ start: '02:00', end: '05:00', timeZone: 'UTC', days: [] })).toEqual(['must name at least one day']);
    expect(issues({ start: '02:00', end: '05:00', timeZone: 'UTC', zone: 'UTC' })).toHaveLength(1);
  });

  test.each(['24:00', '7:00', '07:60', '0700', ''])('refuses the time %j', (start) => {
    expect(issues({ start, end: '05:00', timeZone: 'UTC' })).toEqual(['must be a 24-hour time "HH:MM"']);
  });
});

describe('02:00–05:00 Europe/Oslo', () => {
  const oslo = window({});

  test.each([
    ['a summer day lasts 3 h', '2026-06-10T01:00Z', instance('2026-06-10T00:00Z', '2026-06-10T03:00Z')],
    ['a winter day lasts 3 h', '2026-01-15T02:00Z', instance('2026-01-15T01:00Z', '2026-01-15T04:00Z')],
    // 02:00 does not exist on 2026-03-29: the window opens at the first valid instant, 03:00 CEST.
    ['the spring-forward day lasts 2 h', '2026-03-29T02:00Z', instance('2026-03-29T01:00Z', '2026-03-29T03:00Z')],
    // 02:00 happens twice on 2026-10-25: the window opens at the earlier one (CEST) and closes at 05:00 CET.
    ['the fall-back day lasts 4 h', '2026-10-25T02:00Z', instance('2026-10-25T00:00Z', '2026-10-25T04:00Z')],
  ])('%s', (_, instant, expected) => {
    expect(windowContaining(oslo, at(instant))).toEqual(expected);
  });

  test('the fall-back day does not depend on the current date', () => {
    const now = Settings.now;
    try {
      for (const today of ['2026-01-15T12:00Z', '2026-07-15T12:00Z']) {
        Settings.now = () => at(today).getTime();
        expect(windowContaining(oslo, at('2026-10-25T02:00Z'))?.opensAt).toEqual(at('2026-10-25T00:00Z'));
      }
    } finally {
      Settings.now = now;
    }
  });

  test('an instance contains its opening instant but not its closing one', () => {
    expect(windowContaining(oslo, at('2026-06-10T00:00Z'))).toEqual(instance('2026-06-10T00:00Z', '2026-06-10T03:00Z'));
    expect(windowContaining(oslo, at('2026-06-10T03:00Z'))).toBeUndefined();
    expect(windowContaining(oslo, at('2026-06-09T23:59Z'))).toBeUndefined();
  });

  test('the next opening is strictly after the given instant', () => {
    expect(nextWindowOpening(oslo, at('2026-03-28T12:00Z'))).toEqual(
      instance('2026-03-29T01:00Z', '2026-03-29T03:00Z'),
    );
    expect(nextWindowOpening(oslo, at('2026-10-25T00:00Z'))).toEqual(
      instance('2026-10-26T01:00Z', '2026-10-26T04:00Z'),
    );
  });
});

describe('America/New_York clock changes', () => {
  const newYork = window({ start: '01:00', end: '03:00', timeZone: 'America/New_York' });

  test('2026-03-08: 01:00 EST to 03:00 EDT lasts 1 h', () => {
    expect(windowContaining(newYork, at('2026-03-08T06:30Z'))).toEqual(
      instance('2026-03-08T06:00Z', '2026-03-08T07:00Z'),
    );
  });

  test('2026-11-01: 01:00 EDT (the earlier one) to 03:00 EST lasts 3 h', () => {
    expect(windowContaining(newYork, at('2026-11-01T07:30Z'))).toEqual(
      instance('2026-11-01T05:00Z', '2026-11-01T08:00Z'),
    );
  });

  test('a start inside the skipped hour opens when the clocks jump, not later', () => {
    const late = window({ start: '02:30', end: '04:00', timeZone: 'America/New_York' });
    expect(nextWindowOpening(late, at('2026-03-08T00:00Z'))).toEqual(
      instance('2026-03-08T07:00Z', '2026-03-08T08:00Z'),
    );
  });

  test('a window wholly inside the skipped hour does not open that day', () => {
    const skipped = window({ start: '02:10', end: '02:50', timeZone: 'America/New_York' });
    expect(nextWindowOpening(skipped, at('2026-03-07T12:00Z'))).toEqual(
      instance('2026-03-09T06:10Z', '2026-03-09T06:50Z'),
    );
  });
});

describe('a window crossing midnight, 22:00–02:00 Europe/Oslo on Fridays', () => {
  const friday = window({ start: '22:00', end: '02:00', days: ['FRI'] });
  const fridayNight = instance('2026-06-12T20:00Z', '2026-06-13T00:00Z');

  test('is still open after midnight, on Saturday', () => {
    expect(windowContaining(friday, at('2026-06-12T23:30Z'))).toEqual(fridayNight);
  });

  test('does not open on Saturday evening', () => {
    expect(windowContaining(friday, at('2026-06-13T21:00Z'))).toBeUndefined();
    expect(nextWindowOpening(friday, at('2026-06-12T20:00Z'))).toEqual(
      instance('2026-06-19T20:00Z', '2026-06-20T00:00Z'),
    );
  });

  test('opens next on Friday from earlier in the week', () => {
    expect(nextWindowOpening(friday, at('2026-06-08T12:00Z'))).toEqual(fridayNight);
  });
});

describe('the days filter', () => {
  const mwf = window({ start: '01:00', end: '03:00', timeZone: 'UTC', days: ['MON', 'WED', 'FRI'] });

  test('skips the days the window does not open', () => {
    // Wednesday 2026-06-10, then Friday, then Monday.
    expect(nextWindowOpening(mwf, at('2026-06-09T12:00Z'))).toEqual(instance('2026-06-10T01:00Z', '2026-06-10T03:00Z'));
    expect(nextWindowOpening(mwf, at('2026-06-10T01:00Z'))).toEqual(instance('2026-06-12T01:00Z', '2026-06-12T03:00Z'));
    expect(nextWindowOpening(mwf, at('2026-06-12T02:00Z'))).toEqual(instance('2026-06-15T01:00Z', '2026-06-15T03:00Z'));
    expect(windowContaining(mwf, at('2026-06-11T02:00Z'))).toBeUndefined();
  });
});

describe('formatWindow', () => {
  test.each<[Partial<LowActivityWindow>, string]>([
    [{}, '02:00–05:00 Europe/Oslo, Mon–Sun'],
    [{ days: ['FRI', 'MON', 'WED'] }, '02:00–05:00 Europe/Oslo, Mon, Wed, Fri'],
    [{ days: ['MON', 'TUE', 'WED', 'THU', 'FRI', 'SUN'] }, '02:00–05:00 Europe/Oslo, Mon–Fri, Sun'],
    [{ start: '22:00', end: '02:00', timeZone: 'UTC', days: ['SAT', 'SUN'] }, '22:00–02:00 UTC, Sat, Sun'],
  ])('%j reads %j', (input, expected) => {
    expect(formatWindow(window(input))).toBe(expected);
  });
});

describe('shiftedOpenings', () => {
  test('lists the days a spring-forward change moves the opening, and only those', () => {
    const from = new Date('2026-11-25T12:00:00Z');
    const oslo = window({ start: '02:00', end: '05:00', timeZone: 'Europe/Oslo' });
    expect(shiftedOpenings(oslo, from, 400).map((d) => d.toISOString())).toEqual(['2027-03-28T01:00:00.000Z']);
    const newYork = window({ start: '02:30', end: '04:00', timeZone: 'America/New_York' });
    expect(shiftedOpenings(newYork, from, 400).map((d) => d.toISOString())).toEqual(['2027-03-14T07:00:00.000Z']);
  });

  test('nothing when the window does not open that day, or the zone has no clock changes', () => {
    const from = new Date('2026-11-25T12:00:00Z');
    const weekdays = window({ start: '02:00', end: '05:00', timeZone: 'Europe/Oslo', days: ['MON', 'FRI'] });
    expect(shiftedOpenings(weekdays, from, 400)).toEqual([]);
    expect(shiftedOpenings(window({ start: '02:00', end: '05:00', timeZone: 'Asia/Tokyo' }), from, 400)).toEqual([]);
  });
});
