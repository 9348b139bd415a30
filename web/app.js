/* global document, window, sessionStorage, history, location, fetch, crypto, setTimeout, clearTimeout, URLSearchParams */
// The Snapshots page: a thin client of the HTTP API (/api/openapi.json). The API key comes from the URL fragment
// (#key=...), which browsers never send to the server, and is then kept in sessionStorage for this tab only.
'use strict';

const KEY_STORAGE = 'vm-snapshots.api-key';
const POLL_MS = 1000;
const NAME_CHECK_DELAY_MS = 150;
const STAGE_NAMES = {
  VALIDATING: 'Validation',
  INITIATING: 'Initiation',
  CAPTURING: 'Data capture',
  COMPRESSING: 'Compression',
  VERIFYING: 'Verification',
};

const $ = (id) => document.getElementById(id);

/** An error answer of the API: `{ type, message }`. */
class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

const state = {
  region: 'CANADA-1',
  vms: [],
  statuses: new Map(),
  pollTimer: undefined,
  nameCheck: { seq: 0, timer: undefined, result: undefined },
  idempotencyKey: undefined,
};

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: {
      Authorization: `Bearer ${sessionStorage.getItem(KEY_STORAGE) ?? ''}`,
      ...(options.body ? { 'Content-Type': 'application/json' } : {}),
    },
  });
  const body = response.status === 204 ? null : await response.json();
  if (response.ok) return body;
  if (response.status === 401) showKeyPrompt(body.message);
  throw new ApiError(response.status, body.type, body.message);
}

function takeKeyFromFragment() {
  const key = new URLSearchParams(location.hash.slice(1)).get('key');
  if (!key) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  // The key leaves the address bar (and the history) at once.
  history.replaceState(null, '', location.pathname + location.search);
}

function showKeyPrompt(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  clearTimeout(state.pollTimer);
  if ($('create-dialog').open) $('create-dialog').close();
  $('snapshots-view').hidden = true;
  $('account').textContent = '';
  $('key-prompt').hidden = false;
  $('key-error').textContent = message ?? '';
  $('key-input').focus();
}

async function start() {
  if (!sessionStorage.getItem(KEY_STORAGE)) return showKeyPrompt();
  let billing;
  try {
    billing = await api('/api/billing');
  } catch (error) {
    if (error.status !== 401) $('key-error').textContent = error.message;
    return;
  }
  $('key-prompt').hidden = true;
  $('snapshots-view').hidden = false;
  $('account').textContent = `Account ${billing.accountId} · available credit ${billing.available.text}`;
  await showRegion($('region').value);
}

async function showRegion(region) {
  state.region = region;
  $('caption-region').textContent = region;
  $('page-error').textContent = '';
  try {
    const eligible = await api(`/api/vms?region=${encodeURIComponent(region)}`);
    state.vms = eligible.vms;
    $('create-button').disabled = eligible.createDisabledReason !== null;
    $('create-disabled-reason').textContent = eligible.createDisabledReason ?? '';
  } catch (error) {
    $('page-error').textContent = error.message;
  }
  await refreshList();
}

async function refreshList() {
  clearTimeout(state.pollTimer);
  const region = state.region;
  let snapshots;
  try {
    ({ snapshots } = await api(`/api/snapshots?region=${encodeURIComponent(region)}`));
  } catch (error) {
    $('page-error').textContent = error.message;
    return;
  }
  if (region !== state.region) return;
  snapshots.sort((a, b) => b.createdAt.localeCompare(a.createdAt));
  $('snapshot-rows').replaceChildren(...snapshots.map(snapshotRow));
  $('empty').hidden = snapshots.length > 0;
  announceChanges(snapshots);
  if (snapshots.some((s) => s.status in STAGE_NAMES)) {
    state.pollTimer = setTimeout(refreshList, POLL_MS);
  }
}

/** Tells screen readers when a snapshot finishes, not at every progress tick. */
function announceChanges(snapshots) {
  for (const snapshot of snapshots) {
    const before = state.statuses.get(snapshot.id);
    if (before && before !== snapshot.status && !(snapshot.status in STAGE_NAMES)) {
      $('announcer').textContent = `Snapshot ${snapshot.name}: ${snapshot.status}`;
    }
    state.statuses.set(snapshot.id, snapshot.status);
  }
}

function cell(tag, ...children) {
  const element = document.createElement(tag);
  element.append(...children);
  return element;
}

function text(className, content) {
  const span = cell('span', content);
  span.className = className;
  return span;
}

function snapshotRow(snapshot) {
  const row = document.createElement('tr');
  row.dataset.snapshotId = snapshot.id;
  const name = cell('th', snapshot.name);
  name.scope = 'row';
  if (snapshot.createAsImage) name.append(' ', text('badge', 'Image'));
  if (snapshot.description) name.title = snapshot.description;

  const status = cell('td', text(`status status-${snapshot.status.toLowerCase()}`, snapshot.status));
  if (snapshot.failureType) status.append(text('detail', `${snapshot.failureType}: ${snapshot.failureReason}`));
  if (snapshot.consistency) status.append(text('detail consistency', snapshot.consistency));
  if (snapshot.frozenMs !== null) status.append(text('detail frozen', `guest frozen ${snapshot.frozenMs} ms`));
  for (const read of snapshot.capture?.readWhole ?? []) {
    status.append(text('detail read-whole', `read ${read.disk} whole: ${read.reason}`));
  }

  row.append(
    name,
    cell('td', snapshot.vmName),
    status,
    cell('td', ...progressCell(snapshot)),
    cell('td', sizeText(snapshot)),
    cell('td', snapshot.cost ? `${snapshot.cost.hourly.text}/h · ${snapshot.cost.monthToDate.text} this month` : '—'),
  );
  return row;
}

function progressCell(snapshot) {
  const progress = snapshot.progress;
  if (!progress) return ['—'];
  const stage = STAGE_NAMES[progress.stage];
  const bar = document.createElement('progress');
  bar.max = 100;
  bar.value = progress.percent;
  bar.setAttribute('aria-label', `${snapshot.name}: ${stage}, ${progress.percent}%`);
  const eta = progress.etaSeconds === null ? '' : ` · ETA ${progress.etaSeconds} s`;
  return [
    bar,
    text('detail', `Stage ${progress.stageNumber} of ${progress.stageCount}: ${stage} ${progress.percent}%${eta}`),
  ];
}

function sizeText(snapshot) {
  if (snapshot.storedBytes === null) return '—';
  return `${formatBytes(snapshot.storedBytes)} stored (${formatBytes(snapshot.logicalBytes)} of disks)`;
}

function formatBytes(bytes) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

// --- The Create Snapshot dialog ---

function openCreateDialog() {
  const form = $('create-form');
  form.reset();
  for (const id of ['name-error', 'description-error', 'form-error', 'vm-hint']) $(id).textContent = '';
  $('name').removeAttribute('aria-invalid');
  setAdvancedOpen(false);
  $('vm').replaceChildren(
    ...state.vms.map((vm) => {
      const option = new window.Option(vm.label, vm.id);
      option.dataset.creditHold = vm.creditHold;
      return option;
    }),
  );
  showCreditHold();
  state.nameCheck.result = undefined;
  // One key per dialog opening: a double submit or a retry after a network error never makes two snapshots.
  state.idempotencyKey = crypto.randomUUID();
  $('create-dialog').showModal();
}

function closeCreateDialog() {
  $('create-dialog').close();
}

function showCreditHold() {
  const selected = $('vm').selectedOptions[0];
  $('vm-hint').textContent = selected ? `Credit held while the snapshot is made: ${selected.dataset.creditHold}` : '';
}

function setAdvancedOpen(open) {
  $('advanced').hidden = !open;
  $('advanced-toggle').setAttribute('aria-expanded', String(open));
  $('advanced-toggle').textContent = open ? 'Hide advanced options' : 'Show advanced options';
}

function setFieldError(field, message) {
  $(`${field}-error`).textContent = message ?? '';
  if (message) $(field).setAttribute('aria-invalid', 'true');
  else $(field).removeAttribute('aria-invalid');
}

/** Checks the name with the server's rules as the user types (debounced; stale answers are dropped). */
function scheduleNameCheck() {
  clearTimeout(state.nameCheck.timer);
  state.nameCheck.result = undefined;
  state.nameCheck.timer = setTimeout(checkName, NAME_CHECK_DELAY_MS);
}

async function checkName() {
  const name = $('name').value;
  const seq = ++state.nameCheck.seq;
  try {
    const result = await api(`/api/snapshots/check-name?name=${encodeURIComponent(name)}`);
    if (seq !== state.nameCheck.seq) return undefined;
    state.nameCheck.result = result;
    setFieldError('name', result.message);
    return result;
  } catch (error) {
    $('form-error').textContent = error.message;
    return undefined;
  }
}

async function submitCreate(event) {
  event.preventDefault();
  $('form-error').textContent = '';
  clearTimeout(state.nameCheck.timer);
  const check = state.nameCheck.result ?? (await checkName());
  if (check && !check.available) {
    $('name').focus();
    return;
  }
  const submit = $('submit');
  submit.disabled = true;
  submit.textContent = 'Creating…';
  try {
    const snapshot = await api('/api/snapshots', {
      method: 'POST',
      body: JSON.stringify({
        vmId: $('vm').value,
        region: state.region,
        name: $('name').value,
        description: $('description').value,
        createAsImage: $('create-as-image').checked,
        quiesce: $('require-quiesce').checked ? 'required' : 'best-effort',
        idempotencyKey: state.idempotencyKey,
      }),
    });
    closeCreateDialog();
    $('announcer').textContent = `Snapshot ${snapshot.name} started`;
    await refreshList();
  } catch (error) {
    showCreateError(error);
  } finally {
    submit.disabled = false;
    submit.textContent = 'Create Snapshot';
  }
}

function showCreateError(error) {
  if (error.type === 'InvalidSnapshotName' || error.type === 'SnapshotNameTaken') {
    setFieldError('name', error.message);
    $('name').focus();
  } else if (error.type === 'InvalidDescription') {
    setAdvancedOpen(true);
    setFieldError('description', error.message);
    $('description').focus();
  } else {
    $('form-error').textContent = error.message;
  }
}

function main() {
  takeKeyFromFragment();
  $('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const key = $('key-input').value.trim();
    if (!key) {
      $('key-error').textContent = 'Enter the API key of your account.';
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
    $('key-input').value = '';
    void start();
  });
  $('region').addEventListener('change', () => void showRegion($('region').value));
  $('create-button').addEventListener('click', openCreateDialog);
  $('cancel').addEventListener('click', closeCreateDialog);
  // Escape closes the dialog natively; focus returns to the button that opened it.
  $('create-dialog').addEventListener('close', () => $('create-button').focus());
  $('vm').addEventListener('change', showCreditHold);
  $('name').addEventListener('input', scheduleNameCheck);
  $('advanced-toggle').addEventListener('click', () => setAdvancedOpen($('advanced').hidden));
  $('create-form').addEventListener('submit', (event) => void submitCreate(event));
  void start();
}

main();
