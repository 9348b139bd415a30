import type { DevServer } from '../../devserver/dev-server';

/** Environment variables through which the global setup hands the dev server and workflow bundle to test files. */
export const TEST_ENV = {
  address: 'TEMPORAL_TEST_ADDRESS',
  namespace: 'TEMPORAL_TEST_NAMESPACE',
  workflowBundle: 'TEMPORAL_TEST_WORKFLOW_BUNDLE',
} as const;

/** What the global setup leaves for the global teardown (both run in jest's parent process). */
export interface TestHarness {
  server: DevServer;
  /** Temp folder holding the workflow bundle. */
  bundleDir: string;
}

// Symbol.for: global setup and teardown are loaded through separate module registries but share globalThis.
const KEY = Symbol.for('vm-snapshots.test-harness');
type WithHarness = typeof globalThis & { [KEY]?: TestHarness };

/** Keeps the harness on globalThis for {@link takeTestHarness}. */
export function setTestHarness(harness: TestHarness): void {
  (globalThis as WithHarness)[KEY] = harness;
}

/** Returns and forgets the harness kept by {@link setTestHarness}, if any. */
export function takeTestHarness(): TestHarness | undefined {
  const harness = (globalThis as WithHarness)[KEY];
  delete (globalThis as WithHarness)[KEY];
  return harness;
}
