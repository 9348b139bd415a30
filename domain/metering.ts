import type { Currency } from './billing';
import { RATE_PER_TB_HOUR } from './billing';

/** One TB, as the price list means it: 10^12 bytes. */
export const TB = 1e12;

/** An hour of storage is billed in the hour after it; hours are UTC, identified by their start. */
export const HOUR_MS = 60 * 60 * 1000;

/** The start of the UTC hour containing `instant`. */
export function hourStart(instant: Date): Date {
  return new Date(Math.floor(instant.getTime() / HOUR_MS) * HOUR_MS);
}

/**
 * Charge for storing `bytes` for one hour, in micro-units of the currency, rounded to the nearest micro-unit (half
 * up): bytes / 10^12 × rate per TB-hour. 1 GB for one hour is USD 0.0001 (100 micro-USD).
 */
export function hourlyChargeMicros(bytes: number, currency: Currency): number {
  return Math.round((bytes * RATE_PER_TB_HOUR[currency] * 1e6) / TB);
}

/** What a snapshot (or an image that outlived its snapshot) holds: its chunks, as `region/chunk-id` keys. */
export interface BillableItem {
  id: string;
  chunks: Iterable<string>;
}

export interface ItemStorage {
  id: string;
  /** Compressed bytes of the chunks only this item references. */
  exclusiveBytes: number;
  /** Compressed bytes of the chunks it shares with other items of the account (each counted once here). */
  sharedBytes: number;
  /** Its share of the account's stored bytes: exclusive bytes plus an equal part of every shared chunk. */
  attributedBytes: number;
}

/**
 * How an account's stored bytes split over its items. The account is billed for the compressed bytes of the distinct
 * chunks its items reference (dedup and incremental storage benefit the customer); a chunk k items share is
 * attributed 1/k to each, so the items' attributed bytes add up to the account's bytes.
 */
export function attributeStorage(
  items: readonly BillableItem[],
  storedBytesOf: (chunk: string) => number,
): { totalBytes: number; items: ItemStorage[] } {
  const owners = new Map<string, number>();
  const chunksOf = items.map((item) => new Set(item.chunks));
  for (const chunks of chunksOf) for (const chunk of chunks) owners.set(chunk, (owners.get(chunk) ?? 0) + 1);
  let totalBytes = 0;
  for (const chunk of owners.keys()) totalBytes += storedBytesOf(chunk);
  return {
    totalBytes,
    items: items.map((item, index) => {
      let exclusiveBytes = 0;
      let sharedBytes = 0;
      let attributedBytes = 0;
      for (const chunk of chunksOf[index]!) {
        const bytes = storedBytesOf(chunk);
        const sharers = owners.get(chunk)!;
        if (sharers === 1) exclusiveBytes += bytes;
        else sharedBytes += bytes;
        attributedBytes += bytes / sharers;
      }
      return { id: item.id, exclusiveBytes, sharedBytes, attributedBytes };
    }),
  };
}

/**
 * Splits an integer amount in proportion to `weights` so that the parts are integers adding up to exactly `total`
 * (largest remainder: floors first, then one more unit to the largest fractional parts, ties to the earlier weight).
 */
export function allocate(total: number, weights: readonly number[]): number[] {
  const sum = weights.reduce((a, b) => a + b, 0);
  if (sum <= 0) return weights.map(() => 0);
  const exact = weights.map((w) => (total * w) / sum);
  const parts = exact.map(Math.floor);
  let left = total - parts.reduce((a, b) => a + b, 0);
  const byRemainder = exact.map((value, index) => ({ index, remainder: value - parts[index]! }));
  byRemainder.sort((a, b) => b.remainder - a.remainder || a.index - b.index);
  for (const { index } of byRemainder) {
    if (left <= 0) break;
    parts[index]!++;
    left--;
  }
  return parts;
}
