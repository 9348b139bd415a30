import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import type { Browser, Locator, Page } from 'playwright-core';
import type { z } from 'zod';
import type { ImageListSchema, SnapshotView } from '../api/schemas';
import { startApiServer } from './helpers/api-server';
import type { RunningApi } from './helpers/api-server';
import { createSnapshotEnv, waitFor } from './helpers/snapshot-env';
import type { RunningWorker, SnapshotEnv } from './helpers/snapshot-env';
import { uniqueId } from './support/temporal';

/** Debian's Chromium, installed by scripts/setup.sh; playwright-core drives it and downloads no browser of its own. */
const CHROMIUM = '/usr/bin/chromium';
/** Flags for a headless Chromium on a machine without internet: no sandbox (root), no background connections. */
const CHROMIUM_FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const SCREENSHOTS = path.resolve(__dirname, '..', 'test-results', 'screenshots');
const MiB = 1024 * 1024;
const SNAPSHOT_TIMEOUT_MS = 90_000;

let env: SnapshotEnv;
let worker: RunningWorker;
let api: RunningApi;
let browser: Browser;

beforeAll(async () => {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(
      `Chromium is not installed at ${CHROMIUM}: run \`bash scripts/setup.sh\` (it installs Debian's chromium).`,
    );
  }
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  env = await createSnapshotEnv();
  // Capture at 24 MiB/s: a test VM's 96 MiB take about four seconds, long enough to watch the progress bar.
  // Slow enough that the page, polling each second, sees the capture's progress (capture reads only data chunks).
  worker = await env.startWorker({ captureMaxBytesPerSecond: 8 * MiB });
  api = await startApiServer(env);
  // Playwright gives every launch a fresh, empty user data directory of its own.
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS });
});

afterAll(async () => {
  await browser?.close();
  await api?.close();
  await worker?.stop();
  await env?.close();
});

/** A new browser context (its own sessionStorage) on the Snapshots page, signed in with the account's key. */
async function openPage(account: string, fragmentKey = api.keys[account]): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  await page.goto(`${api.baseUrl}/#key=${encodeURIComponent(fragmentKey!)}`);
  return page;
}

async function screenshot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

function snapshotRow(page: Page, name: string): Locator {
  return page.getByRole('row').filter({ has: page.getByRole('rowheader', { name, exact: false }) });
}

async function openCreateDialog(page: Page): Promise<Locator> {
  // click() waits until the button is enabled, i.e. until the region's VMs are loaded.
  await page.getByRole('button', { name: 'Create Snapshot' }).click();
  const dialog = page.getByRole('dialog', { name: 'Create Snapshot' });
  await dialog.waitFor();
  return dialog;
}

/** The Create Snapshot dialog's own submit button (the page's button has the same name). */
function submitButton(dialog: Locator): Locator {
  return dialog.getByRole('button', { name: 'Create Snapshot' });
}

/** The id of the focused element (page functions are strings: this project's TypeScript has no DOM types). */
function focusedId(page: Page): Promise<string | undefined> {
  return page.evaluate<string | undefined>('document.activeElement?.id');
}

async function waitUntilCreateEnabled(page: Page): Promise<void> {
  await page.locator('#create-button:enabled').waitFor();
}

/** Waits until `locator`'s text contains `text`. */
async function waitForText(locator: Locator, text: string, timeout = 10_000): Promise<void> {
  await locator.filter({ hasText: text }).first().waitFor({ timeout });
}

let firstName: string;

describe('the Snapshots page in Chromium', () => {
  test('a snapshot created through the modal shows its stage progress, then SUCCESS', async () => {
    const page = await openPage('acme');
    // The key leaves the address bar at once.
    expect(new URL(page.url()).hash).toBe('');
    await waitForText(page.locator('#account'), 'Account acme');
    const dialog = await openCreateDialog(page);
    const vmOptions = await dialog.getByLabel('Virtual machine').locator('option').allTextContents();
    expect(vmOptions).toEqual(['trainer-01 - H100-SXM5-80GB (CANADA-1)', 'trainer-02 - H100-SXM5-80GB (CANADA-1)']);
    await dialog.getByLabel('Virtual machine').selectOption({ label: 'trainer-01 - H100-SXM5-80GB (CANADA-1)' });
    firstName = uniqueId('page');
    await dialog.getByLabel('Snapshot name').fill(firstName);
    await screenshot(page, '01-create-dialog');
    await submitButton(dialog).click();
    await dialog.waitFor({ state: 'hidden' });

    const row = snapshotRow(page, firstName);
    await row.locator('progress:not([value="0"])').waitFor({ timeout: SNAPSHOT_TIMEOUT_MS });
    expect(await row.getByRole('progressbar').getAttribute('aria-label')).toMatch(
      new RegExp(`^${firstName}: .+, \\d+%$`),
    );
    expect(await row.textContent()).toMatch(/Stage [1-5] of 5: .+ \d+%/);
    await screenshot(page, '02-snapshot-in-progress');
    await waitForText(row, 'SUCCESS', SNAPSHOT_TIMEOUT_MS);
    expect(await row.getByRole('progressbar').count()).toBe(0);
    expect(await row.getByRole('cell').nth(0).textContent()).toBe('trainer-01');
    expect(await row.textContent()).toMatch(/MiB stored \(96\.0 MiB of disks\)/);
    expect(await row.locator('.consistency').textContent()).toBe('application-consistent');
    expect(await row.locator('.frozen').textContent()).toMatch(/^guest frozen \d+ ms$/);
    await screenshot(page, '03-snapshot-success');
    await page.context().close();
  });

  test('Create Snapshot is disabled with "No active VMs available" in a region without an ACTIVE VM', async () => {
    const page = await openPage('acme');
    const button = page.getByRole('button', { name: 'Create Snapshot' });
    await page.getByLabel('Region').selectOption('US-1');
    await waitForText(page.locator('#create-disabled-reason'), 'No active VMs available');
    expect(await button.isDisabled()).toBe(true);
    // Screen readers read the reason with the button.
    expect(await button.getAttribute('aria-describedby')).toBe('create-disabled-reason');
    await screenshot(page, '04-no-active-vms');
    await page.getByLabel('Region').selectOption('CANADA-1');
    await waitForText(page.locator('#caption-region'), 'CANADA-1');
    await waitUntilCreateEnabled(page);
    expect(await page.locator('#create-disabled-reason').textContent()).toBe('');
    await page.context().close();
  });

  test('the name is checked as the user types, and the dialog works from the keyboard', async () => {
    const page = await openPage('acme');
    const button = page.getByRole('button', { name: 'Create Snapshot' });
    await waitUntilCreateEnabled(page);
    await button.focus();
    await page.keyboard.press('Enter');
    const dialog = page.getByRole('dialog', { name: 'Create Snapshot' });
    await dialog.waitFor();
    // Focus moves into the dialog, on its first field.
    expect(await focusedId(page)).toBe('vm');

    const name = dialog.getByLabel('Snapshot name');
    const error = page.locator('#name-error');
    await page.keyboard.press('Tab');
    await page.keyboard.type('x'.repeat(51));
    await waitForText(error, 'Invalid name: must be 1–50 characters');
    expect(await name.getAttribute('aria-invalid')).toBe('true');
    await screenshot(page, '05-name-too-long');

    await name.fill(firstName.toUpperCase());
    await waitForText(error, `A snapshot named "${firstName}" already exists`);
    await screenshot(page, '06-name-taken');
    // Submitting a taken name keeps the dialog open with the message, focus back on the name.
    await submitButton(dialog).click();
    expect(await dialog.isVisible()).toBe(true);
    expect(await focusedId(page)).toBe('name');

    await name.fill('trailing space ');
    await waitForText(error, 'must not end with a space');
    await name.fill(uniqueId('fine'));
    await page.locator('#name-error:empty').waitFor({ state: 'attached' });
    expect(await name.getAttribute('aria-invalid')).toBeNull();

    // Escape closes the dialog and gives focus back to the button that opened it.
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });
    expect(await focusedId(page)).toBe('create-button');
    await page.context().close();
  });

  test('advanced options add a description and make the snapshot a boot image', async () => {
    const page = await openPage('acme');
    const dialog = await openCreateDialog(page);
    const toggle = dialog.getByRole('button', { name: 'Show advanced options' });
    expect(await toggle.getAttribute('aria-expanded')).toBe('false');
    expect(await dialog.getByLabel('Description').isVisible()).toBe(false);
    await toggle.click();
    expect(await dialog.getByRole('button', { name: 'Hide advanced options' }).getAttribute('aria-expanded')).toBe(
      'true',
    );

    const name = uniqueId('golden');
    const description = 'CUDA 12.4 base image\nfor the research team';
    await dialog.getByLabel('Virtual machine').selectOption({ label: 'trainer-02 - H100-SXM5-80GB (CANADA-1)' });
    await dialog.getByLabel('Snapshot name').fill(name);
    await dialog.getByLabel('Description').fill(description);
    await dialog.getByRole('switch', { name: 'Create as Image' }).check();
    await dialog.getByRole('switch', { name: 'Require application-consistent' }).check();
    await screenshot(page, '07-advanced-options');
    const posted = page.waitForRequest((r) => r.method() === 'POST' && r.url().endsWith('/api/snapshots'));
    await submitButton(dialog).click();
    expect((await posted).postDataJSON()).toMatchObject({ quiesce: 'required' });
    await dialog.waitFor({ state: 'hidden' });

    const row = snapshotRow(page, name);
    await waitForText(row, 'SUCCESS', SNAPSHOT_TIMEOUT_MS);
    expect(await row.getByRole('rowheader').textContent()).toBe(`${name} Image`);
    await screenshot(page, '08-image-success');
    await page.context().close();

    // Through the API: the description was stored as typed, and the snapshot is listed among boot images.
    const { body: list } = await api.call<{ snapshots: SnapshotView[] }>('acme', 'GET', '/api/snapshots');
    const snapshot = list.snapshots.find((s) => s.name === name)!;
    expect(snapshot).toMatchObject({ description, createAsImage: true, vmName: 'trainer-02', status: 'SUCCESS' });
    const image = await waitFor(async () => {
      const { body } = await api.call<z.infer<typeof ImageListSchema>>('acme', 'GET', '/api/images');
      return body.images.find((i) => i.snapshotId === snapshot.id);
    });
    expect(image).toMatchObject({ name, region: 'CANADA-1', flavor: 'H100-SXM5-80GB' });
  });

  test("another account's page shows none of acme's snapshots or VMs, and its own errors clearly", async () => {
    const page = await openPage('fjord');
    await waitForText(page.locator('#account'), 'Account fjord');
    await page.locator('#empty').waitFor();
    expect(await page.getByRole('rowheader').count()).toBe(0);
    expect(await page.content()).not.toContain(firstName);
    await screenshot(page, '09-fjord-canada-empty');

    await page.getByLabel('Region').selectOption('NORWAY-1');
    await waitForText(page.locator('#caption-region'), 'NORWAY-1');
    const dialog = await openCreateDialog(page);
    const vmOptions = await dialog.getByLabel('Virtual machine').locator('option').allTextContents();
    expect(vmOptions).toEqual(['arm-sim-01 - L40S-48GB (NORWAY-1)']);
    await dialog.getByLabel('Snapshot name').fill('arm-sim-backup');
    await submitButton(dialog).click();
    // fjord has INR 0.001 of credit: the API's InsufficientCredits message is shown in the dialog.
    await waitForText(dialog.getByRole('alert'), 'Insufficient credits');
    await screenshot(page, '10-fjord-insufficient-credits');
    await page.context().close();
    expect(env.platform.catalog.listSnapshots({ accountId: 'fjord', includeDeleted: true })).toEqual([]);
  });

  test('an unknown key shows the key prompt, which accepts a valid key', async () => {
    const page = await openPage('acme', 'snap_not-a-key');
    const prompt = page.getByLabel('API key of your account');
    await prompt.waitFor();
    await waitForText(page.locator('#key-error'), 'Unknown API key');
    expect(await page.locator('#snapshots-view').isVisible()).toBe(false);
    await screenshot(page, '11-key-prompt');
    await prompt.fill(api.keys.acme!);
    await page.getByRole('button', { name: 'Continue' }).click();
    await snapshotRow(page, firstName).waitFor();
    expect(await page.evaluate<number>('sessionStorage.length')).toBe(1);
    await page.context().close();
  });
});
