import { STATUS_CODES, maxHeaderSize } from 'node:http';
import path from 'node:path';
import fastifyRateLimit from '@fastify/rate-limit';
import fastifyStatic from '@fastify/static';
import fastifySwagger from '@fastify/swagger';
import Fastify from 'fastify';
import { z } from 'zod';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { jsonSchemaTransform, serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import type { BillingClient } from '../client/billing-client';
import type { PolicyClient } from '../client/policy-client';
import type { SnapshotClient } from '../client/snapshot-client';
import type { Config } from '../domain/config';
import { SnapshotError } from '../domain/errors';
import { SnapshotNameSchema } from '../domain/requests';
import type { Catalog } from '../platform/ports';
import type { ApiMetrics } from './metrics';
import { RateLimitedError, UnauthorizedError, clientErrorAnswer, toApiError } from './errors';
import type { ApiErrorAnswer } from './errors';
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
import { billingView, eligibleVmsView, imagesView, policyView, snapshotCosts, snapshotView } from './views';

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

/** Timeouts, the connection cap and the rate limits of the API (from the SNAP_HTTP_* settings of domain/config.ts). */
export interface ApiLimits {
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  keepAliveTimeoutMs: number;
  maxConnections: number;
  rateWindowMs: number;
  ratePerKey: number;
  ratePerAddress: number;
}

/** The API's limits as configured; the headers must be due no later than the whole request (Node refuses otherwise). */
export function apiLimits(config: Config): ApiLimits {
  if (config.SNAP_HTTP_HEADERS_TIMEOUT_MS > config.SNAP_HTTP_REQUEST_TIMEOUT_MS) {
    throw new Error(
      `Invalid configuration: SNAP_HTTP_HEADERS_TIMEOUT_MS (${config.SNAP_HTTP_HEADERS_TIMEOUT_MS}) exceeds ` +
        `SNAP_HTTP_REQUEST_TIMEOUT_MS (${config.SNAP_HTTP_REQUEST_TIMEOUT_MS}); set it to at most the request timeout.`,
    );
  }
  return {
    headersTimeoutMs: config.SNAP_HTTP_HEADERS_TIMEOUT_MS,
    requestTimeoutMs: config.SNAP_HTTP_REQUEST_TIMEOUT_MS,
    keepAliveTimeoutMs: config.SNAP_HTTP_KEEP_ALIVE_TIMEOUT_MS,
    maxConnections: config.SNAP_HTTP_MAX_CONNECTIONS,
    rateWindowMs: config.SNAP_HTTP_RATE_WINDOW_MS,
    ratePerKey: config.SNAP_HTTP_RATE_PER_KEY,
    ratePerAddress: config.SNAP_HTTP_RATE_PER_ADDRESS,
  };
}

export interface ApiServerOptions {
  snapshots: SnapshotClient;
  policies: PolicyClient;
  billing: BillingClient;
  catalog: Catalog;
  limits: ApiLimits;
  /** Where answered requests are counted (served by the separate metrics endpoint, api/metrics.ts). */
  metrics?: ApiMetrics;
  /** Fastify's request log (pino, JSON lines on stdout); off by default. */
  logger?: boolean;
}

const OPENAPI_PATH = '/api/openapi.json';
const WEB_ROOT = path.resolve(__dirname, '..', 'web');

/**
 * Sent with every answer, the raw ones of the 'clientError' handler included: API answers hold account data that no
 * cache may keep (the page's static files set their own Cache-Control), and a browser must not sniff a JSON body
 * into something it would run.
 */
const SECURITY_HEADERS: Record<string, string> = { 'Cache-Control': 'no-store', 'X-Content-Type-Options': 'nosniff' };

/** Error responses a route documents, all with the `{ type, message }` body. */
function errorResponses(...statuses: number[]) {
  return Object.fromEntries([401, 429, ...statuses].map((status) => [status, ApiErrorSchema]));
}

/** A complete HTTP/1.1 error response for a socket no request object exists for, closing the connection. */
function rawErrorResponse({ status, body }: ApiErrorAnswer): string {
  const json = JSON.stringify(body);
  const headers = {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': String(Buffer.byteLength(json)),
    ...SECURITY_HEADERS,
    Connection: 'close',
  };
  const lines = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`);
  return `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\n${lines.join('')}\r\n${json}`;
}

/**
 * Answers an error with its `{ type, message }` body; an unexpected one is logged and answered 500. Sets the security
 * headers itself: a framework error (a path the router cannot decode) is answered without the onSend hooks.
 */
function sendError(error: unknown, request: FastifyRequest, reply: FastifyReply) {
  const answer = toApiError(error);
  reply.headers(SECURITY_HEADERS);
  if (!answer) {
    request.log.error(error);
    return reply.code(500).send({
      type: 'InternalError',
      message: `Internal error (request ${request.id}); the server log has the details.`,
    });
  }
  return reply
    .code(answer.status)
    .headers(answer.headers ?? {})
    .send(answer.body);
}

/**
 * The HTTP API (`/api/...`, every route scoped to the account of its `Authorization: Bearer <key>`) and the Snapshots
 * page (`/`, static files from `web/`). Returns the Fastify instance, not yet listening.
 */
export function createApiServer(options: ApiServerOptions) {
  const { snapshots, policies, billing, catalog, limits } = options;
  const app = Fastify({
    logger: options.logger ?? false,
    http: {
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      // Node looks for requests past their timeout every 30 s by default, which would let a half-sent request live
      // up to 30 s longer than its timeout; ten looks per headers timeout keep it within a tenth of it.
      connectionsCheckingInterval: Math.ceil(limits.headersTimeoutMs / 10),
    },
    requestTimeout: limits.requestTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    // No idle-socket timeout (Fastify's connectionTimeout): a restore is answered only once its VM is ACTIVE, so a
    // connection may rightly be silent for minutes; the timeouts above already bound what a client must send.
    // No path parameter is too long for the router (Fastify's default is 100 characters): any that fits in a request
    // line (Node's maxHeaderSize) reaches the route's schema and its typed refusal.
    routerOptions: { maxParamLength: maxHeaderSize },
    // A path the router cannot decode (a bad percent-escape) gets the same error shape.
    frameworkErrors: (error, request, reply) => void sendError(error, request, reply),
    // Bytes Node's parser refuses (malformed request lines, oversized headers) and requests not received in time.
    clientErrorHandler: (error, socket) => {
      if (error.code === 'ECONNRESET' || socket.destroyed) return;
      if (!socket.writable) return void socket.destroy();
      socket.end(rawErrorResponse(clientErrorAnswer(error, { maxHeaderBytes: maxHeaderSize })), () => socket.destroy());
    },
  }).withTypeProvider<ZodTypeProvider>();
  app.server.maxConnections = limits.maxConnections;
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  app.setErrorHandler(sendError);
  const { metrics } = options;
  if (metrics) {
    app.addHook('onResponse', async (request, reply) => {
      metrics.countRequest(request.method, request.routeOptions.url, reply.statusCode);
    });
  }
  app.addHook('onSend', async (_request, reply) => {
    for (const [name, value] of Object.entries(SECURITY_HEADERS)) {
      if (!reply.raw.hasHeader(name)) reply.header(name, value);
    }
  });

  // Rate limits: each client address, then each API key, may send so many requests per window. Checked in hooks
  // (the address one first, on every request; the key one once the key is known) that throw RateLimitedError, so a
  // refusal has the same shape as every other one.
  void app.register(fastifyRateLimit, { global: false });
  const rateLimit = (max: number, keyGenerator?: (request: FastifyRequest) => string) => {
    // Made on first use: the plugin's createRateLimit exists once the server has loaded its plugins.
    let check: ReturnType<typeof app.createRateLimit> | undefined;
    return async (request: FastifyRequest, what: string) => {
      check ??= app.createRateLimit({ max, timeWindow: limits.rateWindowMs, ...(keyGenerator && { keyGenerator }) });
      const limit = await check(request);
      if (!limit.isAllowed && limit.isExceeded) {
        throw new RateLimitedError(
          `More than ${max} requests in ${limits.rateWindowMs / 1000} s from ${what}: ` +
            `retry after ${limit.ttlInSeconds} s.`,
          limit.ttlInSeconds,
        );
      }
    };
  };
  const perAddress = rateLimit(limits.ratePerAddress);
  const perKey = rateLimit(limits.ratePerKey, (request) => `key:${request.caller.keyId}`);
  app.addHook('onRequest', async (request) => perAddress(request, 'this address'));
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
  const costsOf = (accountId: string) => snapshotCosts(billing.accountBilling(accountId));

  void app.register(
    (api, _options, done) => {
      api.decorateRequest('caller', null as unknown as Caller);
      api.addHook('onRequest', async (request) => {
        if (request.routeOptions.url === OPENAPI_PATH) return;
        request.caller = authenticate(request);
        await perKey(request, 'this API key');
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
          const creditHold = (vmId: string) => snapshots.creditHold(accountId, vmId).text;
          return eligibleVmsView(region, snapshots.listEligibleVms(accountId, region), creditHold);
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
          const live = await snapshots.listSnapshotsLive(accountId, { region: request.query.region });
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
        async (request) => imagesView(snapshots.listImages(request.caller.accountId, request.query.region)),
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
