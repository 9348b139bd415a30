import { BufferPool } from '../../dataplane/memory';

const KiB = 1024;

describe('BufferPool', () => {
  test('counts blocks by their reach, and keeps free blocks only while all it holds fits the budget', () => {
    const pool = new BufferPool(1024 * KiB);
    const a = pool.take(300 * KiB); // a 512 KiB block, reach 300 KiB
    const b = pool.take(400 * KiB);
    const c = pool.take(500 * KiB);
    expect(pool.stats()).toEqual({
      budgetBytes: 1024 * KiB,
      inUseBytes: 1200 * KiB,
      freeBytes: 0,
      highWaterBytes: 1200 * KiB,
    });
    pool.give(a); // 900 in use + 300 free would pass the budget: dropped
    expect(pool.stats()).toMatchObject({ inUseBytes: 900 * KiB, freeBytes: 0 });
    pool.give(b); // 500 + 400 fits: kept
    expect(pool.stats()).toMatchObject({ inUseBytes: 500 * KiB, freeBytes: 400 * KiB });
    const d = pool.take(450 * KiB); // reuses b's block: its reach grows to 450 KiB
    expect(d.buffer).toBe(b.buffer);
    expect(pool.stats()).toMatchObject({ inUseBytes: 950 * KiB, freeBytes: 0, highWaterBytes: 1200 * KiB });
    pool.give(c);
    pool.give(d);
    expect(pool.stats()).toMatchObject({ inUseBytes: 0, freeBytes: 950 * KiB });
    pool.setBudget(600 * KiB); // one of the two free blocks goes
    expect(pool.stats().freeBytes).toBeLessThanOrEqual(600 * KiB);
    expect(pool.stats().freeBytes).toBeGreaterThan(0);
  });
});
