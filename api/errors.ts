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
 * is damaged; 503 the service cannot run it now (Temporal server or workers down); 507 the repository is out of space.
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
  IdempotencyKeyReused: 409,
  SnapshotInProgress: 409,
  SnapshotNotRestorable: 409,
  PolicyExists: 409,
  DiskChanged: 409,
  Cancelled: 409,
  GuestFreezeFailed: 409,
  VmNotBootable: 409,
  ChunkCorrupt: 500,
  ChunkMissing: 500,
  ManifestMissing: 500,
  TemporalUnavailable: 503,
  WorkerUnavailable: 503,
  HostUnavailable: 503,
  ManifestCorrupt: 500,
  StorageFull: 507,
  SnapshotSpaceExhausted: 507,
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

/** A client over its request rate (429); it may try again after `retryAfterSeconds` (sent as `Retry-After`). */
export class RateLimitedError extends Error {
  override readonly name = 'RateLimitedError';
  constructor(
    message: string,
    readonly retryAfterSeconds: number,
  ) {
    super(message);
  }
}

/** How an error is answered: status, JSON body and the headers that go with it. */
export interface ApiErrorAnswer {
  status: number;
  body: ApiError;
  headers?: Record<string, string>;
}

/** Fastify's error for a path that is not valid percent-encoding. */
const BAD_URL_CODE = 'FST_ERR_BAD_URL';

/** The answer to an error; `undefined` for an unexpected error (a bug: 500). */
export function toApiError(error: unknown): ApiErrorAnswer | undefined {
  if (error instanceof UnauthorizedError) {
    return {
      status: 401,
      body: { type: 'Unauthorized', message: error.message },
      headers: { 'WWW-Authenticate': 'Bearer' },
    };
  }
  if (error instanceof RateLimitedError) {
    return {
      status: 429,
      body: { type: 'RateLimited', message: error.message },
      headers: { 'Retry-After': String(error.retryAfterSeconds) },
    };
  }
  if (error instanceof SnapshotError) {
    return { status: HTTP_STATUS[error.type], body: { type: error.type, message: error.message } };
  }
  if (hasZodFastifySchemaValidationErrors(error)) {
    return { status: 400, body: validationError(error.validation[0]!, error.validationContext ?? 'request') };
  }
  // Fastify's own client errors: malformed JSON, wrong content type, body too large, a path that is not valid
  // percent-encoding.
  const { statusCode: status, code } = error instanceof Error ? (error as Partial<FastifyError>) : {};
  if (error instanceof Error && status !== undefined && status >= 400 && status < 500) {
    const hint =
      code === BAD_URL_CODE ? ': a "%" in a path starts a two-hex-digit escape; send "%" itself as "%25"' : '';
    return { status, body: { type: 'InvalidRequest', message: `${error.message}${hint}` } };
  }
  return undefined;
}

function validationError(issue: ZodFastifySchemaValidationError, context: string): ApiError {
  const field = issue.instancePath.slice(1).replaceAll('/', '.');
  const type = (context === 'body' && FIELD_ERROR_TYPES[field]) || 'InvalidRequest';
  return { type, message: `Invalid ${field || context}: ${issue.message}` };
}

/** Node's error for a request that did not arrive in full within the server's headers or request timeout. */
const REQUEST_TIMEOUT_CODE = 'ERR_HTTP_REQUEST_TIMEOUT';
/** llhttp's error for request headers (request line included) over Node's `maxHeaderSize`. */
const HEADER_OVERFLOW_CODE = 'HPE_HEADER_OVERFLOW';

/**
 * The answer to a request Node's HTTP parser refused before any route saw it (the server's 'clientError'): a request
 * not received in time (408), headers too large (431), or bytes that are not an HTTP/1.1 request (400).
 */
export function clientErrorAnswer(
  error: Error & { code?: string; reason?: string },
  limits: { maxHeaderBytes: number },
): ApiErrorAnswer {
  if (error.code === REQUEST_TIMEOUT_CODE) {
    return {
      status: 408,
      body: {
        type: 'RequestTimeout',
        message: 'The request was not received in full in time: send the whole request at once.',
      },
    };
  }
  if (error.code === HEADER_OVERFLOW_CODE) {
    return {
      status: 431,
      body: {
        type: 'InvalidRequest',
        message: `The request line and headers exceed ${limits.maxHeaderBytes} bytes: send smaller headers.`,
      },
    };
  }
  const reason = error.reason ?? error.message;
  return {
    status: 400,
    body: {
      type: 'InvalidRequest',
      message: `Not a valid HTTP/1.1 request (${reason}): send "<METHOD> <path> HTTP/1.1", then headers.`,
    },
  };
}
