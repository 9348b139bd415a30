/**
 * A separate client process for race tests: opens the catalog file of a data directory and the test Temporal server,
 * reads its create requests (JSON) from argv, waits for a line on stdin so every process fires at once, sends all its
 * requests concurrently and prints one JSON line of outcomes. `distinctIds` starts each request's workflow under an id
 * of its own (update-with-start, as the client does), so only the catalog can settle requests for one name.
 *
 * Usage: tsx test/support/race-client.ts <dataDir> <taskQueue> <distinctIds: 0|1> '<requests JSON>'
 */
import { randomUUID } from 'node:crypto';
import readline from 'node:readline';
import { WithStartWorkflowOperation } from '@temporalio/client';
import { SnapshotClient, toSnapshotError } from '../../client/snapshot-client';
import { SnapshotError } from '../../domain/errors';
import type { CreateSnapshotRequest } from '../../domain/requests';
import { CreateSnapshotRequestSchema } from '../../domain/requests';
import { openEmbeddedPlatform } from '../../platform/local';
import type { snapshotWorkflow } from '../../workflows';
import { acceptedUpdate } from '../../workflows/messages';
import { snapshotStartOptions } from '../../workflows/start-options';
import { connectTestClient } from './temporal';

/** What a racer reports for each request: accepted with its snapshot, or refused with its type. */
export type RaceOutcome = { snapshotId: string } | { refused: string; message: string };

async function main(): Promise<void> {
  const [dataDir, taskQueue, distinctIds, json] = process.argv.slice(2);
  const requests = JSON.parse(json!) as CreateSnapshotRequest[];
  const { catalog } = openEmbeddedPlatform(dataDir!);
  const temporal = await connectTestClient();
  const snapshots = new SnapshotClient({ client: temporal.client, catalog, taskQueue: taskQueue! });

  const createWithOwnId = async (input: CreateSnapshotRequest) => {
    const request = CreateSnapshotRequestSchema.parse(input);
    const snapshotId = `snap-${randomUUID()}`;
    const vm = catalog.getVm(request.vmId)!;
    return temporal.client.workflow
      .executeUpdateWithStart(acceptedUpdate, {
        args: [{ snapshotId, request }],
        startWorkflowOperation: new WithStartWorkflowOperation<typeof snapshotWorkflow>('snapshotWorkflow', {
          ...snapshotStartOptions({ snapshotId, request }, vm),
          workflowId: `race/${snapshotId}`,
          taskQueue: taskQueue!,
          workflowIdConflictPolicy: 'FAIL',
        }),
      })
      .catch((error: unknown) => {
        throw toSnapshotError(error);
      });
  };
  const create = distinctIds === '1' ? createWithOwnId : (r: CreateSnapshotRequest) => snapshots.createSnapshot(r);

  // Ready: the parent releases every racer at once.
  process.stdout.write('ready\n');
  await new Promise<void>((resolve) =>
    readline.createInterface({ input: process.stdin }).once('line', () => resolve()),
  );
  const outcomes: RaceOutcome[] = await Promise.all(
    requests.map((request) =>
      create(request).then(
        (accepted) => ({ snapshotId: accepted.snapshotId }),
        (error: unknown) =>
          error instanceof SnapshotError
            ? { refused: error.type, message: error.message }
            : { refused: 'untyped', message: String(error) },
      ),
    ),
  );
  process.stdout.write(`${JSON.stringify(outcomes)}\n`);
  await temporal.close();
  catalog.close();
}

main().catch((error: unknown) => {
  process.stderr.write(`${String(error)}\n`);
  process.exit(1);
});
