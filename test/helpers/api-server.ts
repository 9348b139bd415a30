import type { AddressInfo } from 'node:net';
import type { ApiError } from '../../api/schemas';
import { ApiMetrics, createMetricsServer } from '../../api/metrics';
import { apiLimits, createApiServer } from '../../api/server';
import type { ApiLimits } from '../../api/server';
import { loadConfig } from '../../domain/config';
import { seedDemoApiKeys } from '../../platform/local/seed';
import type { SnapshotEnv } from './snapshot-env';

export interface RunningApi {
  baseUrl: string;
  port: number;
  /** The demo accounts' API keys (acme, fjord, newco), as seeding wrote them. */
  keys: Record<string, string>;
  /**
   * Calls the API as `account` (or without a key when `account` is null) and returns the status and the JSON body,
   * typed as the caller expects it (`T`: an error body unless told otherwise).
   */
  call<T = ApiError>(
    account: string | null,
    method: string,
    path: string,
    body?: unknown,
  ): Promise<{ status: number; body: T; headers: Headers }>;
  /** The text of the API's metrics endpoint (`GET /metrics` on its own port). */
  scrapeMetrics(): Promise<string>;
  close(): Promise<void>;
}

/** The HTTP API of a test env on a free port of 127.0.0.1, with the default limits unless told otherwise. */
export async function startApiServer(env: SnapshotEnv, limits: Partial<ApiLimits> = {}): Promise<RunningApi> {
  // Seeding the env already created the keys; this returns them without changing anything.
  const keys = await seedDemoApiKeys(env.platform.catalog, env.platform.dataDir);
  const metrics = new ApiMetrics({ catalog: env.platform.catalog, client: env.client, taskQueue: env.taskQueue });
  const metricsServer = createMetricsServer(metrics);
  const metricsAddress = await metricsServer.listen({ port: 0, host: '127.0.0.1' });
  const app = createApiServer({
    snapshots: env.snapshots,
    policies: env.policies,
    billing: env.billing,
    catalog: env.platform.catalog,
    limits: { ...apiLimits(loadConfig({})), ...limits },
    metrics,
  });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const { port } = app.server.address() as AddressInfo;
  const baseUrl = `http://127.0.0.1:${port}`;
  return {
    baseUrl,
    port,
    keys,
    async call<T>(account: string | null, method: string, path: string, body?: unknown) {
      const headers: Record<string, string> = {};
      if (account) headers.authorization = `Bearer ${keys[account]}`;
      if (body !== undefined) headers['content-type'] = 'application/json';
      const response = await fetch(`${baseUrl}${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
      });
      const text = await response.text();
      return { status: response.status, body: (text ? JSON.parse(text) : null) as T, headers: response.headers };
    },
    async scrapeMetrics() {
      return (await fetch(`${metricsAddress}/metrics`)).text();
    },
    async close() {
      await app.close();
      await metricsServer.close();
    },
  };
}
