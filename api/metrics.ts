import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import Fastify from 'fastify';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { SnapshotStatusSchema } from '../domain/model';
import type { Catalog } from '../platform/ports';

/** Where the API's metrics read the state they report at scrape time. */
export interface ApiMetricsSources {
  catalog: Catalog;
  client: Client;
  taskQueue: string;
}

/** The task queue types whose backlog is reported, by their label. */
const QUEUE_TYPES = {
  workflow: temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
  activity: temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
} as const;

/**
 * The API's Prometheus metrics:
 *
 * - `snap_api_requests_total{method, route, status}`: answered requests, by route template (`/api/snapshots/:id`, so
 *   ids never become labels; `unmatched` for paths without a route);
 * - `snap_catalog_snapshots{status}`: snapshots in the catalog by status, read at scrape time;
 * - `snap_task_queue_backlog{task_queue, type}`: tasks waiting on the task queue (Temporal's approximate backlog
 *   count, DescribeTaskQueue with reportStats), read at scrape time;
 * - Node's process metrics (`process_*`, `nodejs_*`).
 */
export class ApiMetrics {
  readonly registry = new Registry();
  private readonly requests = new Counter({
    name: 'snap_api_requests_total',
    help: 'HTTP API requests answered, by method, route and status',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [this.registry],
  });

  constructor(sources: ApiMetricsSources) {
    const { catalog, client, taskQueue } = sources;
    collectDefaultMetrics({ register: this.registry });
    new Gauge({
      name: 'snap_catalog_snapshots',
      help: 'Snapshots in the catalog, by status',
      labelNames: ['status'] as const,
      registers: [this.registry],
      collect() {
        const counts = new Map(SnapshotStatusSchema.options.map((status) => [status, 0]));
        for (const snapshot of catalog.listSnapshots({ includeDeleted: true })) {
          counts.set(snapshot.status, (counts.get(snapshot.status) ?? 0) + 1);
        }
        for (const [status, count] of counts) this.set({ status }, count);
      },
    });
    new Gauge({
      name: 'snap_task_queue_backlog',
      help: 'Tasks waiting on the task queue (approximate), by task type',
      labelNames: ['task_queue', 'type'] as const,
      registers: [this.registry],
      async collect() {
        await Promise.all(
          Object.entries(QUEUE_TYPES).map(async ([type, taskQueueType]) => {
            const described = await client.workflowService.describeTaskQueue({
              namespace: client.options.namespace,
              taskQueue: { name: taskQueue },
              taskQueueType,
              reportStats: true,
            });
            this.set({ task_queue: taskQueue, type }, Number(described.stats?.approximateBacklogCount ?? 0));
          }),
        );
      },
    });
  }

  /** Counts one answered request. */
  countRequest(method: string, route: string | undefined, status: number): void {
    this.requests.inc({ method, route: route ?? 'unmatched', status: String(status) });
  }
}

/**
 * The API's metrics endpoint, `GET /metrics`, on a listener of its own: it is for the operator's Prometheus, not for
 * tenants, so it is never on the tenant API's port (and binds to loopback unless configured otherwise).
 */
export function createMetricsServer(metrics: ApiMetrics) {
  const app = Fastify({ logger: false });
  app.get('/metrics', async (_request, reply) =>
    reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()),
  );
  return app;
}
