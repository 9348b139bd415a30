import type { ValidCreateSnapshotRequest } from './requests';

/**
 * What identifies a create request for idempotency: every field that shapes the snapshot (not `requestedBy`, which
 * only records who asked, nor the key itself). Two requests with the same key and the same fingerprint are one
 * request; the same key with another fingerprint is `IdempotencyKeyReused`. Pure, so the workflow can compare too;
 * the catalog stores its SHA-256 with the key.
 */
export function requestFingerprint(request: ValidCreateSnapshotRequest): string {
  return JSON.stringify([
    request.accountId,
    request.vmId,
    request.region,
    request.name,
    request.description,
    request.createAsImage,
    request.policyId ?? null,
    // Appended only when not the default, so the digests stored before quiesce existed still match their retries.
    ...(request.quiesce === 'required' ? ['quiesce:required'] : []),
  ]);
}

/** Why Create is unavailable in a region where the account has no ACTIVE VM (the refusal says the same). */
export const NO_ACTIVE_VMS = 'No active VMs available';

/** The message of `SnapshotNameTaken`. */
export function nameTakenMessage(name: string, existingId?: string): string {
  return (
    `A snapshot named "${name}" already exists in this account${existingId ? ` (${existingId})` : ''}; ` +
    'names are unique across all regions, ignoring case. Choose another name.'
  );
}

/** The message of `IdempotencyKeyReused`. */
export function idempotencyKeyReusedMessage(key: string, existingId: string): string {
  return (
    `The idempotency key "${key}" was already used for snapshot ${existingId} with other fields; ` +
    'a retry must repeat the request exactly. Use a new key for a new request.'
  );
}
