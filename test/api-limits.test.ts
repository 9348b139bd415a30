import http from 'node:http';
import net from 'node:net';
import type { ApiError } from '../api/schemas';
import { apiLimits } from '../api/server';
import { loadConfig } from '../domain/config';
import { startApiServer } from './helpers/api-server';
import type { RunningApi } from './helpers/api-server';
import { createSnapshotEnv } from './helpers/snapshot-env';
import type { SnapshotEnv } from './helpers/snapshot-env';

/** An HTTP answer as it came off the socket. */
interface RawAnswer {
  status: number;
  headers: Record<string, string>;
  body: unknown;
}

/**
 * Writes `bytes` to the API over a plain socket and collects everything the server sends until it closes the
 * connection; `null` if it closed without sending anything.
 */
function rawExchange(port: number, bytes: string): Promise<RawAnswer | null> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1' });
    const received: Buffer[] = [];
    socket.on('data', (data) => received.push(data));
    socket.on('error', reject);
    socket.on('close', () => {
      const text = Buffer.concat(received).toString('utf8');
      if (!text) return resolve(null);
      const [head = '', body = ''] = text.split('\r\n\r\n', 2);
      const [statusLine = '', ...headerLines] = head.split('\r\n');
      const headers = Object.fromEntries(
        headerLines.map((line) => {
          const colon = line.indexOf(':');
          return [line.slice(0, colon).toLowerCase(), line.slice(colon + 1).trim()];
        }),
      );
      resolve({ status: Number(statusLine.split(' ')[1]), headers, body: JSON.parse(body) });
    });
    socket.write(bytes);
  });
}

/** A GET from a chosen local address (every 127.x.y.z is this machine), so tests can be several clients. */
function getFrom(
  localAddress: string,
  port: number,
  path: string,
  key?: string,
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: unknown }> {
  return new Promise((resolve, reject) => {
    const request = http.get(
      {
        host: '127.0.0.1',
        port,
        path,
        localAddress,
        agent: false,
        headers: key ? { authorization: `Bearer ${key}` } : {},
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () =>
          resolve({
            status: response.statusCode ?? 0,
            headers: response.headers,
            body: JSON.parse(Buffer.concat(chunks).toString('utf8')),
          }),
        );
      },
    );
    request.on('error', reject);
  });
}

const isTypedError = (body: unknown, type: ApiError['type']) => {
  expect(Object.keys(body as object).sort()).toEqual(['message', 'type']);
  expect((body as ApiError).type).toBe(type);
  expect((body as ApiError).message.length).toBeGreaterThan(20);
};

let env: SnapshotEnv;

beforeAll(async () => {
  env = await createSnapshotEnv();
});

afterAll(async () => {
  await env?.close();
});

describe('HTTP API under abuse', () => {
  let api: RunningApi;
  beforeAll(async () => {
    // Short timeouts, so a half-sent request is cut within the test.
    api = await startApiServer(env, { headersTimeoutMs: 500, requestTimeoutMs: 1000 });
  });
  afterAll(async () => {
    await api?.close();
  });

  test('a path with a bad percent-escape is refused with a typed JSON error', async () => {
    const answer = await api.call('acme', 'GET', '/api/snapshots/%zz');
    expect(answer.status).toBe(400);
    isTypedError(answer.body, 'InvalidRequest');
    expect(answer.body.message).toContain('/api/snapshots/%zz');
    expect(answer.body.message).toContain('send "%" itself as "%25"');
  });

  test('ids up to the schema maximum of 200 characters reach the route; longer ones are typed refusals', async () => {
    const found = await api.call('acme', 'GET', `/api/snapshots/${'a'.repeat(200)}`);
    expect(found.status).toBe(404);
    isTypedError(found.body, 'SnapshotNotFound');
    const overSchema = await api.call('acme', 'GET', `/api/snapshots/${'a'.repeat(201)}`);
    expect(overSchema.status).toBe(400);
    isTypedError(overSchema.body, 'InvalidRequest');
    const long = await api.call('acme', 'GET', `/api/snapshots/${'a'.repeat(10_000)}`);
    expect(long.status).toBe(400);
    isTypedError(long.body, 'InvalidRequest');
  });

  test('a malformed request line is answered 400 with the JSON error shape, and the connection closed', async () => {
    const answer = await rawExchange(api.port, 'HELLO /api/vms HTTP/1.1\r\nHost: x\r\n\r\n');
    expect(answer?.status).toBe(400);
    expect(answer?.headers.connection).toBe('close');
    expect(answer?.headers['content-type']).toBe('application/json; charset=utf-8');
    isTypedError(answer?.body, 'InvalidRequest');
  });

  test('oversized headers are answered 431 with the JSON error shape, and the connection closed', async () => {
    const big = 'x'.repeat(20 * 1024);
    const answer = await rawExchange(api.port, `GET /api/vms HTTP/1.1\r\nHost: x\r\nX-Big: ${big}\r\n\r\n`);
    expect(answer?.status).toBe(431);
    expect(answer?.headers.connection).toBe('close');
    isTypedError(answer?.body, 'InvalidRequest');
    expect((answer?.body as ApiError).message).toContain('16384 bytes');
  });

  test('a request whose headers never end is answered 408 and closed by the server', async () => {
    const answer = await rawExchange(api.port, 'GET /api/vms HTTP/1.1\r\nHost: x\r\n');
    expect(answer?.status).toBe(408);
    expect(answer?.headers.connection).toBe('close');
    isTypedError(answer?.body, 'RequestTimeout');
  });

  test('a request whose body never arrives in full is answered 408 and closed by the server', async () => {
    const head = `POST /api/snapshots HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${api.keys.acme}\r\n`;
    const answer = await rawExchange(
      api.port,
      `${head}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"vm`,
    );
    expect(answer?.status).toBe(408);
    isTypedError(answer?.body, 'RequestTimeout');
  });

  test('every answer, success or refusal, says no-store and nosniff', async () => {
    const answers = [
      await api.call('acme', 'GET', '/api/billing'),
      await api.call(null, 'GET', '/api/billing'),
      await api.call('acme', 'GET', '/api/nowhere'),
      await api.call('acme', 'GET', '/api/snapshots/%zz'),
    ];
    expect(answers.map((answer) => answer.status)).toEqual([200, 401, 404, 400]);
    for (const answer of answers) {
      expect(answer.headers.get('cache-control')).toBe('no-store');
      expect(answer.headers.get('x-content-type-options')).toBe('nosniff');
    }
    const raw = await rawExchange(api.port, 'HELLO\r\n\r\n');
    expect(raw?.headers['cache-control']).toBe('no-store');
    expect(raw?.headers['x-content-type-options']).toBe('nosniff');
  });
});

test('a headers timeout longer than the request timeout is a configuration error that names both settings', () => {
  const config = loadConfig({ SNAP_HTTP_HEADERS_TIMEOUT_MS: '40000', SNAP_HTTP_REQUEST_TIMEOUT_MS: '30000' });
  expect(() => apiLimits(config)).toThrow(
    'Invalid configuration: SNAP_HTTP_HEADERS_TIMEOUT_MS (40000) exceeds SNAP_HTTP_REQUEST_TIMEOUT_MS (30000)',
  );
});

describe('HTTP API rate limits and connection cap', () => {
  test('a burst over the per-key limit is refused 429 with Retry-After; another key is not affected', async () => {
    const api = await startApiServer(env, { ratePerKey: 5, ratePerAddress: 100 });
    try {
      const statuses: number[] = [];
      for (let i = 0; i < 5; i += 1) statuses.push((await api.call('acme', 'GET', '/api/billing')).status);
      expect(statuses).toEqual([200, 200, 200, 200, 200]);
      const refused = await api.call('acme', 'GET', '/api/billing');
      expect(refused.status).toBe(429);
      isTypedError(refused.body, 'RateLimited');
      expect(refused.body.message).toContain('this API key');
      const retryAfter = Number(refused.headers.get('retry-after'));
      expect(retryAfter).toBeGreaterThanOrEqual(1);
      expect(retryAfter).toBeLessThanOrEqual(60);
      expect((await api.call('fjord', 'GET', '/api/billing')).status).toBe(200);
    } finally {
      await api.close();
    }
  });

  test('a burst over the per-address limit is refused 429, with or without a key; another address is not affected', async () => {
    const api = await startApiServer(env, { ratePerKey: 100, ratePerAddress: 3 });
    try {
      const statuses: number[] = [];
      for (let i = 0; i < 3; i += 1) statuses.push((await getFrom('127.0.0.2', api.port, '/api/billing')).status);
      expect(statuses).toEqual([401, 401, 401]);
      const refused = await getFrom('127.0.0.2', api.port, '/api/billing', api.keys.acme);
      expect(refused.status).toBe(429);
      isTypedError(refused.body, 'RateLimited');
      expect((refused.body as ApiError).message).toContain('this address');
      expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
      expect((await getFrom('127.0.0.3', api.port, '/api/billing', api.keys.acme)).status).toBe(200);
    } finally {
      await api.close();
    }
  });

  test('connections over the cap are closed on arrival', async () => {
    const api = await startApiServer(env, { maxConnections: 2 });
    const open: net.Socket[] = [];
    try {
      for (let i = 0; i < 2; i += 1) {
        const socket = net.connect({ port: api.port, host: '127.0.0.1' });
        await new Promise((resolve) => socket.once('connect', resolve));
        open.push(socket);
      }
      expect(await rawExchange(api.port, 'GET /api/billing HTTP/1.1\r\nHost: x\r\n\r\n')).toBeNull();
    } finally {
      for (const socket of open) socket.destroy();
      await api.close();
    }
  });
});
