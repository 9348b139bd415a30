import { proxyActivities, setCurrentDetails } from '@temporalio/workflow';
import type { Activities } from '../activities';
import type { MeteredAccount } from '../activities/metering';
import { HOUR_MS, hourStart } from '../domain/metering';
import { scheduledStartTime } from './profiles';

const { meterHour } = proxyActivities<Activities>({
  startToCloseTimeout: '30 minutes',
  heartbeatTimeout: '1 minute',
  retry: { initialInterval: '5s', maximumInterval: '5 minutes', maximumAttempts: 20 },
});

/**
 * Charges every account for one UTC hour of storage. Started by the hourly Schedule `billing/hourly` at the top of
 * each hour, it bills the hour that just ended (the hour before its scheduled time, so a backfill or a catch-up run
 * bills the hour it stands for); `hour` overrides that. Re-running an hour never charges twice: the ledger holds one
 * entry per account and hour.
 */
export async function meteringWorkflow(input: { hour?: string } = {}): Promise<{
  hour: string;
  accounts: MeteredAccount[];
}> {
  const scheduledAt = scheduledStartTime();
  const hour = input.hour ?? new Date(hourStart(scheduledAt).getTime() - HOUR_MS).toISOString();
  setCurrentDetails(`Metering storage for the hour starting ${hour}`);
  const accounts = await meterHour({ hour });
  const newly = accounts.filter((a) => a.charged).length;
  setCurrentDetails(
    `Hour ${hour}: ${newly} accounts charged, ${accounts.length - newly} already charged for that hour`,
  );
  return { hour, accounts };
}
