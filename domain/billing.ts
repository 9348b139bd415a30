/** Billing rules of the product page, as pure functions. Money is held in integer micro-units (1e-6 of a unit). */

export const CURRENCIES = ['USD', 'EUR', 'INR'] as const;
export type Currency = (typeof CURRENCIES)[number];

/** Price of storing one TB (10^12 bytes) for one hour: USD 0.1, EUR 0.1, INR 10. */
export const RATE_PER_TB_HOUR: Record<Currency, number> = { USD: 0.1, EUR: 0.1, INR: 10 };

/**
 * "Sufficient credits": the available balance (balance minus holds of snapshots in flight) must cover this many hours
 * of the snapshot's estimated stored size — one 30-day month, so a new snapshot never runs the account dry at once.
 */
export const MIN_COVERED_HOURS = 24 * 30;

/**
 * The estimate assumes no compression and no dedup (the VM's provisioned disk bytes are all stored): conservative,
 * so a snapshot never costs more than its hold promised.
 */
export function estimatedStoredBytes(diskSizes: number[]): number {
  return diskSizes.reduce((sum, size) => sum + size, 0);
}

/** Credit hold for a snapshot: the estimate's cost over MIN_COVERED_HOURS, in micro-units, rounded up. */
export function creditHoldMicros(storedBytes: number, currency: Currency): number {
  return Math.ceil((storedBytes / 1e12) * RATE_PER_TB_HOUR[currency] * MIN_COVERED_HOURS * 1e6);
}

/** 1234567 micro-USD → "USD 1.234567" trimmed to cents where exact enough: "USD 1.23". */
export function formatMoney(micros: number, currency: Currency): string {
  const units = micros / 1e6;
  return `${currency} ${units >= 1 || units === 0 ? units.toFixed(2) : units.toPrecision(3)}`;
}
