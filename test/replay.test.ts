import fs from 'node:fs';
import path from 'node:path';
import { temporal } from '@temporalio/proto';
import { Worker } from '@temporalio/worker';
import * as workflows from '../workflows';
import { testWorkflowBundle } from './support/temporal';

/**
 * Replay safety: the recorded histories of test/fixtures/histories (written by `npm run record-histories`: one run of
 * each workflow type as `<type>.json`, other paths as `<type>.<variant>.json`) replay on the current workflow code. A
 * change that makes a workflow issue other commands than its recorded run did fails here, as it would fail every run
 * in flight when the worker is deployed.
 */
const HISTORIES_DIR = path.join(__dirname, 'fixtures', 'histories');

/** A fixture as the record script wrote it (protobufjs's JSON form of a History). */
function readHistory(fixture: string): temporal.api.history.v1.History {
  const json: unknown = JSON.parse(fs.readFileSync(path.join(HISTORIES_DIR, `${fixture}.json`), 'utf8'));
  return temporal.api.history.v1.History.fromObject(json as Record<string, unknown>);
}

const workflowTypes = Object.keys(workflows).sort();
const fixtures = fs
  .readdirSync(HISTORIES_DIR)
  .map((file) => path.basename(file, '.json'))
  .sort();
/** `snapshotWorkflow.failed-verification` → `snapshotWorkflow`. */
const typeOf = (fixture: string): string => fixture.split('.')[0]!;

test('every workflow type has a recorded history, and every recorded history a workflow type', () => {
  expect(fixtures.filter((fixture) => fixture === typeOf(fixture))).toEqual(workflowTypes);
  expect([...new Set(fixtures.map(typeOf))].sort()).toEqual(workflowTypes);
});

test.each(fixtures)('the recorded history %s replays on the current code', async (fixture) => {
  const history = readHistory(fixture);
  const started = history.events[0]?.workflowExecutionStartedEventAttributes;
  expect(started?.workflowType?.name).toBe(typeOf(fixture));
  // Throws DeterminismViolationError (or the workflow's own error) when the code no longer matches the history.
  await Worker.runReplayHistory({ workflowBundle: testWorkflowBundle() }, history, `replay-${fixture}`);
});
