import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Connection } from '@temporalio/client';
import { SearchAttributeType } from '@temporalio/common';
import { encodeSearchAttributeIndexedValueType } from '@temporalio/common/lib/search-attributes';
import { msToTs } from '@temporalio/common/lib/time';
import { isServerUp, startDevServer } from '../devserver/dev-server';
import { ensureTemporalCli } from '../devserver/temporal-cli';
import { SEARCH_ATTRIBUTE_NAMES } from '../domain/search-attributes';
import { connectTestClient, uniqueId } from './support/temporal';

const KEYWORD = encodeSearchAttributeIndexedValueType(SearchAttributeType.KEYWORD)!;

async function customAttributes(connection: Connection, namespace: string): Promise<Record<string, unknown>> {
  const response = await connection.operatorService.listSearchAttributes({ namespace });
  return response.customAttributes;
}

test('the global dev server answers and has every search attribute as Keyword', async () => {
  const temporal = await connectTestClient();
  try {
    expect(await isServerUp(temporal.connection.options.address)).toBe(true);
    const attributes = await customAttributes(temporal.connection, temporal.client.options.namespace);
    for (const name of SEARCH_ATTRIBUTE_NAMES)
      expect({ name, type: attributes[name] }).toEqual({ name, type: KEYWORD });
  } finally {
    await temporal.close();
  }
});

test('a dev server with a database file keeps namespaces and search attributes across a restart', async () => {
  const cliPath = await ensureTemporalCli();
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'snap-devserver-'));
  const dbFile = path.join(dir, 'nested', 'temporal.db');
  const namespace = uniqueId('persisted');
  try {
    const first = await startDevServer({ cliPath, port: 0, uiPort: false, dbFile });
    try {
      const connection = await Connection.connect({ address: first.address });
      await connection.workflowService.registerNamespace({
        namespace,
        workflowExecutionRetentionPeriod: msToTs('1 day'),
      });
      await connection.operatorService.addSearchAttributes({
        namespace: 'default',
        searchAttributes: { PersistenceProbe: KEYWORD },
      });
      await connection.close();
    } finally {
      await first.stop();
    }
    expect(await isServerUp(first.address)).toBe(false);

    const second = await startDevServer({ cliPath, port: 0, uiPort: false, dbFile });
    try {
      const connection = await Connection.connect({ address: second.address });
      const described = await connection.workflowService.describeNamespace({ namespace });
      expect(described.namespaceInfo?.name).toBe(namespace);
      const attributes = await customAttributes(connection, 'default');
      expect(attributes.PersistenceProbe).toBe(KEYWORD);
      for (const name of SEARCH_ATTRIBUTE_NAMES) expect(attributes[name]).toBe(KEYWORD);
      await connection.close();
    } finally {
      await second.stop();
    }
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});
