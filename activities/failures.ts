import { ApplicationFailure } from '@temporalio/activity';
import { PERMANENT_ERROR_TYPES, isSnapshotErrorType } from '../domain/errors';

/**
 * Runs an activity body and turns typed errors (domain `SnapshotError`s and data-plane errors, which both carry a
 * stable `type`) into ApplicationFailures: permanent types non-retryable, others retried by the activity's policy.
 * Anything untyped (I/O errors, cancellation) is rethrown unchanged and retried.
 */
export async function withFailureTypes<T>(body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (error) {
    if (error instanceof Error && 'type' in error && isSnapshotErrorType(error.type)) {
      throw ApplicationFailure.create({
        type: error.type,
        message: error.message,
        nonRetryable: PERMANENT_ERROR_TYPES.includes(error.type),
      });
    }
    throw error;
  }
}
