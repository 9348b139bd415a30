import { Context } from '@temporalio/activity';
import { distinctChunks } from '../dataplane';
import type { Region } from '../domain/model';
import type { ChargeItem, HourlyCharge } from '../domain/model';
import { allocate, attributeStorage, HOUR_MS, hourlyChargeMicros } from '../domain/metering';
import type { ActivityDeps } from './deps';
import { withFailureTypes } from './failures';
import { readSnapshotManifest } from './manifests';

export interface MeteredAccount {
  accountId: string;
  storedBytes: number;
  amountMicros: number;
  /** False when this account and hour had already been charged (a re-run): nothing was charged again. */
  charged: boolean;
}

/**
 * Hourly metering: for every account, the compressed bytes of the distinct chunks its billable items reference, at
 * the account's rate, written as one ledger entry per account and hour (the catalog refuses a second one).
 *
 * Billable in hour H: SUCCESS snapshots completed before H ended, and images created before H ended whose snapshot
 * was deleted (an image keeps that data stored). Snapshots in flight, FAILED, DAMAGED or DELETED are not billed;
 * a deleted snapshot is not billed for any hour metered after its deletion.
 */
export function createMeteringActivities(deps: ActivityDeps) {
  return {
    async meterHour(input: { hour: string }): Promise<MeteredAccount[]> {
      return withFailureTypes(() => meter(input));
    },
  };

  async function meter(input: { hour: string }): Promise<MeteredAccount[]> {
    const context = Context.current();
    const hourEnd = new Date(Date.parse(input.hour) + HOUR_MS).toISOString();
    const sizes = new Map<string, number>();
    const storedBytesOf = (key: string) => sizes.get(key)!;
    const chunkKeys = async (region: Region, manifestId: string): Promise<string[]> => {
      const repository = deps.repositoryFor(region);
      const keys: string[] = [];
      for (const id of distinctChunks(await readSnapshotManifest(deps, region, manifestId))) {
        const key = `${region}/${id}`;
        if (!sizes.has(key)) sizes.set(key, await repository.chunkStoredSize(id));
        keys.push(key);
      }
      return keys;
    };

    const metered: MeteredAccount[] = [];
    for (const account of deps.catalog.listAccounts()) {
      context.heartbeat(account.id);
      const items: (Pick<ChargeItem, 'itemId' | 'kind' | 'name'> & { chunks: string[] })[] = [];
      for (const snapshot of deps.catalog.listSnapshots({ accountId: account.id, status: 'SUCCESS' })) {
        if (!snapshot.completedAt || snapshot.completedAt >= hourEnd) continue;
        const chunks = await chunkKeys(snapshot.region, snapshot.id);
        items.push({ itemId: snapshot.id, kind: 'snapshot', name: snapshot.name, chunks });
      }
      for (const image of deps.catalog.listImages({ accountId: account.id })) {
        if (image.createdAt >= hourEnd || deps.catalog.getSnapshot(image.snapshotId)?.status !== 'DELETED') continue;
        const chunks = await chunkKeys(image.region, image.snapshotId);
        items.push({ itemId: image.id, kind: 'image', name: image.name, chunks });
      }
      const storage = attributeStorage(
        items.map((item) => ({ id: item.itemId, chunks: item.chunks })),
        storedBytesOf,
      );
      const amountMicros = hourlyChargeMicros(storage.totalBytes, account.currency);
      const shares = allocate(
        amountMicros,
        storage.items.map((item) => item.attributedBytes),
      );
      const charge: HourlyCharge = {
        accountId: account.id,
        hour: input.hour,
        currency: account.currency,
        storedBytes: storage.totalBytes,
        amountMicros,
        items: items.map((item, index) => ({
          itemId: item.itemId,
          kind: item.kind,
          name: item.name,
          exclusiveBytes: storage.items[index]!.exclusiveBytes,
          sharedBytes: storage.items[index]!.sharedBytes,
          attributedBytes: storage.items[index]!.attributedBytes,
          amountMicros: shares[index]!,
        })),
      };
      const charged = deps.catalog.recordHourlyCharge(charge);
      metered.push({ accountId: account.id, storedBytes: storage.totalBytes, amountMicros, charged });
    }
    return metered;
  }
}
