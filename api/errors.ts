import type { FastifyError } from 'fastify';
import type { ZodFastifySchemaValidationError } from 'fastify-type-provider-zod';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import type { SnapshotErrorType } from '../domain/errors';
import { SnapshotError } from '../domain/errors';
import type { ApiError } from './schemas';

/**
 * HTTP status of each domain error type: 400 the request itself is wrong; 402 the account lacks credits; 403 the
 * account's profile is incomplete; 404 the thing does not exist in this account (another account's snapshot included);
 * 409 the request conflicts with the current state (name taken, snapshot in progress, VM not ACTIVE); 500 stored data
 * is damaged; 507 the repository is out of space.
 */
export const HTTP_STATUS: Record<SnapshotErrorType, number> = {
  InvalidRequest: 400,
  InvalidSnapshotName: 400,
  InvalidDescription: 400,
  InvalidVmName: 400,
  InvalidPolicy: 400,
  RegionMismatch: 400,
  InsufficientCredits: 402,
  ProfileIncomplete: 403,
  AccountNotFound: 404,
  VmNotFound: 404,
  SnapshotNotFound: 404,
  DiskNotFound: 404,
  ImageNotFound: 404,
  PolicyNotFound: 404,
  NoActiveVms: 409,
  VmNotActive: 409,
  SnapshotNameTaken: 409,
  SnapshotInProgress: 409,
  SnapshotNotRestorable: 409,
  PolicyExists: 409,
  DiskChanged: 409,
  Cancelled: 409,
  ChunkCorrupt: 500,
  ChunkMissing: 500,
  ManifestMissing: 500,
  ManifestCorrupt: 500,
  StorageFull: 507,
};

/** Body fields whose violations have their own domain type (the same as the client library raises). */
const FIELD_ERROR_TYPES: Record<string, SnapshotErrorType> = {
  name: 'InvalidSnapshotName',
  description: 'InvalidDescription',
  vmName: 'InvalidVmName',
};

/** A request without a valid API key (401). */
export class UnauthorizedError extends Error {
  override readonly name = 'UnauthorizedError';
}

/** The status and JSON body an error is answered with; `undefined` for an unexpected error (a bug: 500). */
export function toApiError(error: unknown): { status: number; body: ApiError } | undefined {
  if (error instanceof UnauthorizedError) {
    return { status: 401, body: { type: 'Unauthorized', message: error.message } };
  }
  if (error instanceof SnapshotError) {
    return { status: HTTP_STATUS[error.type], body: { type: error.type, message: error.message } };
  }
  if (hasZodFastifySchemaValidationErrors(error)) {
    return { status: 400, body: validationError(error.validation[0]!, error.validationContext ?? 'request') };
  }
  // Fastify's own client errors: malformed JSON, wrong content type, body too large.
  const status = error instanceof Error ? (error as Partial<FastifyError>).statusCode : undefined;
  if (error instanceof Error && status !== undefined && status >= 400 && status < 500) {
    return { status, body: { type: 'InvalidRequest', message: error.message } };
  }
  return undefined;
}

function validationError(issue: ZodFastifySchemaValidationError, context: string): ApiError {
  const field = issue.instancePath.slice(1).replaceAll('/', '.');
  const type = (context === 'body' && FIELD_ERROR_TYPES[field]) || 'InvalidRequest';
  return { type, message: `Invalid ${field || context}: ${issue.message}` };
}
