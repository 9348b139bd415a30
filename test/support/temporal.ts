import { randomUUID } from 'node:crypto';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { z } from 'zod';
import { TEST_ENV } from './harness';

const missing = (name: string): string =>
  `${name} is not set: run tests through jest (npm test), whose global setup starts the Temporal dev server.`;

const EnvSchema = z.object({
  [TEST_ENV.address]: z.string({ error: missing(TEST_ENV.address) }).min(1),
  [TEST_ENV.namespace]: z.string({ error: missing(TEST_ENV.namespace) }).min(1),
  [TEST_ENV.workflowBundle]: z.string({ error: missing(TEST_ENV.workflowBundle) }).min(1),
});

function testEnv(): z.infer<typeof EnvSchema> {
  const parsed = EnvSchema.safeParse(process.env);
  if (!parsed.success) throw new Error(z.prettifyError(parsed.error));
  return parsed.data;
}

/** Connections to the test run's Temporal dev server. */
export interface TestTemporal {
  /** Client bound to the test namespace. */
  client: Client;
  connection: Connection;
  /** For workers (`Worker.create({ connection: nativeConnection, ... })`). */
  nativeConnection: NativeConnection;
  /** Closes both connections; shut workers down first. */
  close(): Promise<void>;
}

/** Connects a client and a worker connection to the dev server started by the jest global setup. */
export async function connectTestClient(): Promise<TestTemporal> {
  const env = testEnv();
  const address = env[TEST_ENV.address];
  const connection = await Connection.connect({ address });
  const nativeConnection = await NativeConnection.connect({ address });
  const client = new Client({ connection, namespace: env[TEST_ENV.namespace] });
  return {
    client,
    connection,
    nativeConnection,
    async close() {
      await nativeConnection.close();
      await connection.close();
    },
  };
}

/** The workflows bundled once by the global setup: pass as `workflowBundle` to `Worker.create`. */
export function testWorkflowBundle(): { codePath: string } {
  return { codePath: testEnv()[TEST_ENV.workflowBundle] };
}

/** A unique name for workflow ids and task queues, so tests sharing one server never collide. */
export function uniqueId(prefix: string): string {
  return `${prefix}-${Date.now().toString(36)}-${randomUUID().slice(0, 8)}`;
}
