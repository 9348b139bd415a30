import { allocate, attributeStorage, hourStart, hourlyChargeMicros } from '../../domain/metering';

describe('hourly charge', () => {
  test('is bytes / 10^12 × the rate per TB-hour, in micro-units rounded to the nearest', () => {
    expect(hourlyChargeMicros(1e12, 'USD')).toBe(100_000); // 1 TB for an hour: USD 0.1
    expect(hourlyChargeMicros(1e12, 'EUR')).toBe(100_000);
    expect(hourlyChargeMicros(1e12, 'INR')).toBe(10_000_000); // INR 10
    expect(hourlyChargeMicros(1e9, 'USD')).toBe(100); // 1 GB: USD 0.0001
    expect(hourlyChargeMicros(14_999_999, 'USD')).toBe(1); // 1.4999999 micro-USD
    expect(hourlyChargeMicros(15_000_000, 'USD')).toBe(2); // half up
    expect(hourlyChargeMicros(0, 'INR')).toBe(0);
  });

  test('hours are UTC hours identified by their start', () => {
    expect(hourStart(new Date('2026-11-25T10:59:59.999Z')).toISOString()).toBe('2026-11-25T10:00:00.000Z');
  });
});

describe('attributeStorage', () => {
  const sizes: Record<string, number> = { a: 100, b: 60, c: 30, d: 10 };
  test('counts each distinct chunk once and splits shared ones evenly', () => {
    const { totalBytes, items } = attributeStorage(
      [
        { id: 'full', chunks: ['a', 'b', 'c'] },
        { id: 'incremental', chunks: ['a', 'b', 'd'] },
        { id: 'other', chunks: ['c', 'c'] },
      ],
      (chunk) => sizes[chunk]!,
    );
    expect(totalBytes).toBe(200);
    expect(items).toEqual([
      { id: 'full', exclusiveBytes: 0, sharedBytes: 190, attributedBytes: 50 + 30 + 15 },
      { id: 'incremental', exclusiveBytes: 10, sharedBytes: 160, attributedBytes: 50 + 30 + 10 },
      { id: 'other', exclusiveBytes: 0, sharedBytes: 30, attributedBytes: 15 },
    ]);
    expect(items.reduce((sum, i) => sum + i.attributedBytes, 0)).toBe(totalBytes);
  });
});

describe('allocate', () => {
  test('integer parts in proportion that add up exactly to the total', () => {
    expect(allocate(10, [1, 1, 1])).toEqual([4, 3, 3]);
    expect(allocate(7, [95, 90, 15])).toEqual([3, 3, 1]);
    expect(allocate(0, [5, 5])).toEqual([0, 0]);
    expect(allocate(5, [0, 0])).toEqual([0, 0]);
    for (const total of [1, 2, 99, 12345]) {
      const parts = allocate(total, [3.3, 1.7, 0.01, 8]);
      expect(parts.reduce((a, b) => a + b, 0)).toBe(total);
    }
  });
});
