import { createHash, randomBytes } from 'node:crypto';

/** Prefix of every API key, so a leaked key is recognisable (secret scanners, logs). */
export const API_KEY_PREFIX = 'snap_';

/** A new random API key: the prefix and 32 random bytes (256 bits) in base64url. */
export function generateApiKey(): string {
  return `${API_KEY_PREFIX}${randomBytes(32).toString('base64url')}`;
}

/**
 * What the catalog stores and looks keys up by: the SHA-256 of the key, in hex. A fast hash is enough because keys are
 * 256 random bits (nothing to brute-force, unlike passwords).
 */
export function hashApiKey(key: string): string {
  return createHash('sha256').update(key).digest('hex');
}
