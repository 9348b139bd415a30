import path from 'node:path';
import fastifyStatic from '@fastify/static';
import fastifySwagger from '@fastify/swagger';
import Fastify from 'fastify';
import { z } from 'zod';
import type { FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { jsonSchemaTransform, serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import type { BillingClient } from '../client/billing-client';
import type { PolicyClient } from '../client/policy-client';
import type { SnapshotClient } from '../client/snapshot-client';
import { NO_ACTIVE_VMS } from '../client/snapshot-client';
import { SnapshotError } from '../domain/errors';
import { isInFlight } from '../domain/model';
import { SnapshotNameSchema } from '../domain/requests';
import type { Catalog } from '../platform/ports';
import { UnauthorizedError, toApiError } from './errors';
import { hashApiKey } from '../platform/api-keys';
import {
  ApiErrorSchema,
  BillingSchema,
  CreateSnapshotBodySchema,
  EligibleVmsSchema,
  ImageListSchema,
  NameCheckQuerySchema,
  NameCheckSchema,
  OptionalRegionQuerySchema,
  PolicyListSchema,
  RegionQuerySchema,
  RestoreBodySchema,
  RestoredVmSchema,
  SnapshotListSchema,
  SnapshotParamsSchema,
  SnapshotSchema,
} from './schemas';
import { billingView, costView, policyView, snapshotView } from './views';

/** Who is calling: the account of the request's API key, and a short id of the key (shown as the requester). */
export interface Caller {
  accountId: string;
  keyId: string;
}

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by the API key check on every /api route but the OpenAPI document. */
    caller: Caller;
  }
}

export interface ApiServerOptions {
  snapshots: SnapshotClient;
  policies: PolicyClient;
  billing: BillingClient;
  catalog: Catalog;
  /** Fastify's request log (pino, JSON lines on stdout); off by default. */
  logger?: boolean;
}

const OPENAPI_PATH = '/api/openapi.json';
const WEB_ROOT = path.resolve(__dirname, '..', 'web');

/** Error responses a route documents, all with the `{ type, message }` body. */
function errorResponses(...statuses: number[]) {
  return Object.fromEntries([401, ...statuses].map((status) => [status, ApiErrorSchema]));
}

/**
 * The HTTP API (`/api/...`, every route scoped to the account of its `Authorization: Bearer <key>`) and the Snapshots
 * page (`/`, static files from `web/`). Returns the Fastify instance, not yet listening.
 */
export function createApiServer(options: ApiServerOptions) {
  const { snapshots, policies, billing, catalog } = options;
  const app = Fastify({ logger: options.logger ?? false }).withTypeProvider<ZodTypeProvider>();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);

  app.setErrorHandler((error, request, reply) => {
    const answer = toApiError(error);
    if (!answer) {
      request.log.error(error);
      return reply.code(500).send({
        type: 'InternalError',
        message: `Internal error (request ${request.id}); the server log has the details.`,
      });
    }
    if (answer.status === 401) reply.header('WWW-Authenticate', 'Bearer');
    return reply.code(answer.status).send(answer.body);
  });
  app.setNotFoundHandler((request, reply) =>
    reply.code(404).send({
      type: 'NotFound',
      message: `No endpoint ${request.method} ${request.url.split('?')[0]}; the API is described at ${OPENAPI_PATH}.`,
    }),
  );

  void app.register(fastifySwagger, {
    openapi: {
      info: {
        title: 'VM snapshots API',
        version: '1.0.0',
        description:
          'Point-in-time snapshots of VMs. Every request is scoped to the account of its API key ' +
          '(`Authorization: Bearer <key>`); errors are `{ "type": "<stable type>", "message": "..." }`.',
      },
      components: { securitySchemes: { apiKey: { type: 'http', scheme: 'bearer' } } },
      security: [{ apiKey: [] }],
    },
    transform: jsonSchemaTransform,
  });

  void app.register(fastifyStatic, {
    root: WEB_ROOT,
    setHeaders(res) {
      // The page loads only its own files; the API key in the URL fragment never leaves the browser.
      res.setHeader('Content-Security-Policy', "default-src 'self'; frame-ancestors 'none'");
      res.setHeader('Cache-Control', 'no-cache');
    },
  });

  const authenticate = (request: FastifyRequest): Caller => {
    const header = request.headers.authorization;
    const key = header?.match(/^Bearer\s+(\S+)$/i)?.[1];
    if (!key) {
      throw new UnauthorizedError('No API key in the request: send it as the header "Authorization: Bearer <key>".');
    }
    const keyHash = hashApiKey(key);
    const accountId = catalog.accountForApiKey(keyHash);
    if (!accountId) throw new UnauthorizedError('Unknown API key: check the key you sent.');
    return { accountId, keyId: keyHash.slice(0, 12) };
  };

  /** A snapshot of the caller's account with its live progress; another account's or a deleted one is not found. */
  const findSnapshot = async (accountId: string, snapshotId: string) => {
    const record = await snapshots.getSnapshot(accountId, snapshotId);
    if (record.status === 'DELETED') {
      throw new SnapshotError('SnapshotNotFound', `Snapshot ${snapshotId} was deleted.`);
    }
    return record;
  };

  /** The account's per-snapshot costs from billing, by snapshot id (null until a snapshot is first metered). */
  const costsOf = (accountId: string) => {
    const bill = billing.accountBilling(accountId);
    const items = new Map(bill.items.map((item) => [item.itemId, costView(item, bill.currency)]));
    return (snapshotId: string) => items.get(snapshotId) ?? null;
  };

  void app.register(
    (api, _options, done) => {
      api.decorateRequest('caller', null as unknown as Caller);
      api.addHook('onRequest', async (request) => {
        if (request.routeOptions.url !== OPENAPI_PATH) request.caller = authenticate(request);
      });
      const routes = api.withTypeProvider<ZodTypeProvider>();

      // The API's description is public: it holds no account data.
      routes.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());

      routes.get(
        '/vms',
        {
          schema: {
            summary: 'ACTIVE VMs of a region, as the Create Snapshot dropdown lists them',
            querystring: RegionQuerySchema,
            response: { 200: EligibleVmsSchema, ...errorResponses(400) },
          },
        },
        async (request) => {
          const { accountId } = request.caller;
          const { region } = request.query;
          const eligible = snapshots.listEligibleVms(accountId, region);
          return {
            region,
            vms: eligible.map(({ vm, label }) => ({
              id: vm.id,
              name: vm.name,
              flavor: vm.flavor,
              region: vm.region,
              label,
              creditHold: snapshots.creditHold(accountId, vm.id).text,
            })),
            createDisabledReason: eligible.length === 0 ? NO_ACTIVE_VMS : null,
          };
        },
      );

      routes.get(
        '/snapshots',
        {
          schema: {
            summary: "The account's snapshots (optionally of one region), with live progress and cost",
            querystring: OptionalRegionQuerySchema,
            response: { 200: SnapshotListSchema, ...errorResponses(400) },
          },
        },
        async (request) => {
          const { accountId } = request.caller;
          const costOf = costsOf(accountId);
          const records = snapshots.listSnapshots(accountId, { region: request.query.region });
          const live = await Promise.all(
            records.map(async (record) =>
              isInFlight(record.status) ? snapshots.getSnapshot(accountId, record.id) : record,
            ),
          );
          return { snapshots: live.map((record) => snapshotView(record, costOf(record.id))) };
        },
      );

      routes.post(
        '/snapshots',
        {
          schema: {
            summary: 'Create a snapshot; answers once the request is validated and the name reserved',
            body: CreateSnapshotBodySchema,
            response: { 202: SnapshotSchema, ...errorResponses(400, 402, 403, 404, 409) },
          },
        },
        async (request, reply) => {
          const { accountId, keyId } = request.caller;
          const started = await snapshots.createSnapshot({
            ...request.body,
            accountId,
            requestedBy: `API key ${keyId}`,
          });
          const record = await findSnapshot(accountId, started.snapshotId);
          return reply
            .code(202)
            .header('Location', `/api/snapshots/${encodeURIComponent(record.id)}`)
            .send(snapshotView(record, null));
        },
      );

      routes.get(
        '/snapshots/check-name',
        {
          schema: {
            summary: 'Whether a name can be used for a new snapshot (the rules and uniqueness), as the user types',
            querystring: NameCheckQuerySchema,
            response: { 200: NameCheckSchema, ...errorResponses(400) },
          },
        },
        async (request) => {
          const { name } = request.query;
          const parsed = SnapshotNameSchema.safeParse(name);
          if (!parsed.success) {
            const message = `Invalid name: ${parsed.error.issues[0]?.message ?? 'not allowed'}`;
            return { name, available: false, type: 'InvalidSnapshotName' as const, message };
          }
          const existing = catalog.findSnapshotByName(request.caller.accountId, name);
          if (existing) {
            const message =
              `A snapshot named "${existing.name}" already exists in this account; names are unique across all ` +
              'regions, ignoring case. Choose another name.';
            return { name, available: false, type: 'SnapshotNameTaken' as const, message };
          }
          return { name, available: true, type: null, message: null };
        },
      );

      routes.get(
        '/snapshots/:id',
        {
          schema: {
            summary: 'One snapshot, with live progress while it runs',
            params: SnapshotParamsSchema,
            response: { 200: SnapshotSchema, ...errorResponses(404) },
          },
        },
        async (request) => {
          const { accountId } = request.caller;
          const record = await findSnapshot(accountId, request.params.id);
          return snapshotView(record, costsOf(accountId)(record.id));
        },
      );

      routes.delete(
        '/snapshots/:id',
        {
          schema: {
            summary: 'Delete a snapshot (one in flight is cancelled first); its storage is freed by garbage collection',
            params: SnapshotParamsSchema,
            response: { 204: z.null().describe('Deleted (no body)'), ...errorResponses(404) },
          },
        },
        async (request, reply) => {
          const { accountId } = request.caller;
          await findSnapshot(accountId, request.params.id);
          await snapshots.deleteSnapshot(accountId, request.params.id);
          return reply.code(204).send(null);
        },
      );

      routes.post(
        '/snapshots/:id/restore',
        {
          schema: {
            summary: 'Restore a SUCCESS snapshot to a new VM in its region; answers when the VM is ACTIVE',
            params: SnapshotParamsSchema,
            body: RestoreBodySchema,
            response: { 201: RestoredVmSchema, ...errorResponses(400, 404, 409) },
          },
        },
        async (request, reply) => {
          const { accountId } = request.caller;
          const snapshot = await findSnapshot(accountId, request.params.id);
          const { vm, bytesRestored } = await snapshots.restoreVm({
            accountId,
            source: { snapshotId: snapshot.id },
            vmName: request.body.vmName,
          });
          return reply.code(201).send({
            vm: { id: vm.id, name: vm.name, region: vm.region, flavor: vm.flavor, status: vm.status },
            bytesRestored,
          });
        },
      );

      routes.get(
        '/images',
        {
          schema: {
            summary: 'Boot images of the account (snapshots made with "Create as Image")',
            querystring: OptionalRegionQuerySchema,
            response: { 200: ImageListSchema, ...errorResponses(400) },
          },
        },
        async (request) => ({
          images: snapshots.listImages(request.caller.accountId, request.query.region).map((image) => ({
            id: image.id,
            name: image.name,
            region: image.region,
            snapshotId: image.snapshotId,
            flavor: image.flavor,
            logicalBytes: image.logicalBytes,
            createdAt: image.createdAt,
          })),
        }),
      );

      routes.get(
        '/policies',
        {
          schema: {
            summary: 'Snapshot policies (recurring snapshots on Temporal Schedules) of the account',
            response: { 200: PolicyListSchema, ...errorResponses() },
          },
        },
        async (request) => ({
          policies: (await policies.listPolicies(request.caller.accountId)).map(policyView),
        }),
      );

      routes.get(
        '/billing',
        {
          schema: {
            summary: 'Credit balance, holds, hourly storage cost and per-snapshot costs',
            response: { 200: BillingSchema, ...errorResponses() },
          },
        },
        async (request) => billingView(billing.accountBilling(request.caller.accountId)),
      );

      done();
    },
    { prefix: '/api' },
  );

  return app;
}
