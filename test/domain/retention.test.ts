import { RetentionSchema, selectRetained } from '../../domain/retention';
import type { Retention } from '../../domain/retention';

const policy = (input: Partial<Retention>): Retention => RetentionSchema.parse({ keepLast: 1, ...input });
const snapshot = (iso: string) => ({ id: iso, createdAt: new Date(iso) });

/** A fixed shuffle (odd positions, then even ones reversed), to show that input order does not matter. */
function shuffled<T>(items: readonly T[]): T[] {
  return [...items.filter((_, index) => index % 2 === 1), ...items.filter((_, index) => index % 2 === 0).reverse()];
}

describe('the retention schema', () => {
  test('defaults the periods to zero', () => {
    expect(RetentionSchema.parse({ keepLast: 3 })).toEqual({
      keepLast: 3,
      keepDaily: 0,
      keepWeekly: 0,
      keepMonthly: 0,
    });
  });

  test('refuses a policy that keeps nothing', () => {
    expect(RetentionSchema.safeParse({ keepLast: 0 }).error?.issues.map((issue) => issue.message)).toEqual([
      'must keep at least the last snapshot (keepLast >= 1)',
    ]);
  });

  test('refuses negative or fractional counts and unknown keys', () => {
    expect(RetentionSchema.safeParse({ keepLast: 1, keepDaily: -1 }).success).toBe(false);
    expect(RetentionSchema.safeParse({ keepLast: 1.5 }).success).toBe(false);
    expect(RetentionSchema.safeParse({ keepLast: 1, keepYearly: 1 }).success).toBe(false);
  });
});

describe('selectRetained', () => {
  test('keepLast keeps the newest snapshots whatever the input order', () => {
    const series = ['2026-11-21T10:00Z', '2026-11-22T10:00Z', '2026-11-23T10:00Z', '2026-11-24T10:00Z'].map(snapshot);
    expect(selectRetained(shuffled(series), policy({ keepLast: 2 }), 'UTC')).toEqual({
      keep: [
        { id: '2026-11-24T10:00Z', reasons: ['last'] },
        { id: '2026-11-23T10:00Z', reasons: ['last'] },
      ],
      expire: ['2026-11-22T10:00Z', '2026-11-21T10:00Z'],
    });
  });

  test('keepLast larger than the number of snapshots keeps them all', () => {
    const series = ['2026-11-24T10:00Z', '2026-11-25T10:00Z'].map(snapshot);
    expect(selectRetained(series, policy({ keepLast: 5 }), 'UTC')).toEqual({
      keep: [
        { id: '2026-11-25T10:00Z', reasons: ['last'] },
        { id: '2026-11-24T10:00Z', reasons: ['last'] },
      ],
      expire: [],
    });
  });

  test('no snapshots, nothing to keep or expire', () => {
    expect(selectRetained([], policy({ keepDaily: 7 }), 'UTC')).toEqual({ keep: [], expire: [] });
  });

  test('keepDaily counts only the days that have a snapshot and keeps the newest of each', () => {
    const series = [
      '2026-11-01T08:00Z',
      '2026-11-02T08:00Z',
      '2026-11-02T20:00Z',
      '2026-11-05T08:00Z',
      '2026-11-09T08:00Z',
      '2026-11-09T09:00Z',
    ].map(snapshot);
    expect(selectRetained(shuffled(series), policy({ keepDaily: 3 }), 'UTC')).toEqual({
      keep: [
        { id: '2026-11-09T09:00Z', reasons: ['last', 'daily 2026-11-09'] },
        { id: '2026-11-05T08:00Z', reasons: ['daily 2026-11-05'] },
        { id: '2026-11-02T20:00Z', reasons: ['daily 2026-11-02'] },
      ],
      expire: ['2026-11-09T08:00Z', '2026-11-02T08:00Z', '2026-11-01T08:00Z'],
    });
  });

  test('daily, weekly and monthly buckets over three months of snapshots every 6 hours', () => {
    const series = Array.from({ length: 86 * 4 }, (_, index) =>
      snapshot(new Date(Date.UTC(2026, 8, 1) + index * 6 * 3600_000).toISOString()),
    );
    const { keep, expire } = selectRetained(
      shuffled(series),
      policy({ keepDaily: 7, keepWeekly: 4, keepMonthly: 3 }),
      'UTC',
    );
    expect(keep).toEqual([
      { id: '2026-11-25T18:00:00.000Z', reasons: ['last', 'daily 2026-11-25', 'weekly 2026-W48', 'monthly 2026-11'] },
      { id: '2026-11-24T18:00:00.000Z', reasons: ['daily 2026-11-24'] },
      { id: '2026-11-23T18:00:00.000Z', reasons: ['daily 2026-11-23'] },
      { id: '2026-11-22T18:00:00.000Z', reasons: ['daily 2026-11-22', 'weekly 2026-W47'] },
      { id: '2026-11-21T18:00:00.000Z', reasons: ['daily 2026-11-21'] },
      { id: '2026-11-20T18:00:00.000Z', reasons: ['daily 2026-11-20'] },
      { id: '2026-11-19T18:00:00.000Z', reasons: ['daily 2026-11-19'] },
      { id: '2026-11-15T18:00:00.000Z', reasons: ['weekly 2026-W46'] },
      { id: '2026-11-08T18:00:00.000Z', reasons: ['weekly 2026-W45'] },
      { id: '2026-10-31T18:00:00.000Z', reasons: ['monthly 2026-10'] },
      { id: '2026-09-30T18:00:00.000Z', reasons: ['monthly 2026-09'] },
    ]);
    expect(expire).toHaveLength(series.length - keep.length);
    expect(expire[0]).toBe('2026-11-25T12:00:00.000Z');
    expect(expire.at(-1)).toBe('2026-09-01T00:00:00.000Z');
  });

  test('days are calendar days in the time zone: 23:30Z is already the next day in Europe/Oslo', () => {
    const series = ['2026-11-24T12:00Z', '2026-11-24T23:30Z'].map(snapshot);
    const daily = policy({ keepDaily: 2 });
    expect(selectRetained(series, daily, 'UTC')).toEqual({
      keep: [{ id: '2026-11-24T23:30Z', reasons: ['last', 'daily 2026-11-24'] }],
      expire: ['2026-11-24T12:00Z'],
    });
    expect(selectRetained(series, daily, 'Europe/Oslo')).toEqual({
      keep: [
        { id: '2026-11-24T23:30Z', reasons: ['last', 'daily 2026-11-25'] },
        { id: '2026-11-24T12:00Z', reasons: ['daily 2026-11-24'] },
      ],
      expire: [],
    });
  });

  test('snapshots taken at the same instant are ordered by id', () => {
    const createdAt = new Date('2026-11-25T10:00Z');
    const series = [
      { id: 'b', createdAt },
      { id: 'a', createdAt },
    ];
    expect(selectRetained(series, policy({}), 'UTC')).toEqual({
      keep: [{ id: 'a', reasons: ['last'] }],
      expire: ['b'],
    });
  });

  test('refuses an unknown time zone', () => {
    expect(() => selectRetained([snapshot('2026-11-25T10:00Z')], policy({}), 'Mars/Base')).toThrow(
      'unknown time zone "Mars/Base"',
    );
  });
});
