/**
 * Errors of the QEMU protocol clients (QMP and the guest agent). A plain library: each error has a stable `type`
 * (`Qmp…` or `GuestAgent…`) and a message that says what to do; the hypervisor driver maps them onto the domain's
 * snapshot errors.
 */

/** The protocol an error comes from. */
export type QemuProtocol = 'QMP' | 'guest agent';

function typeOf<T extends string>(protocol: QemuProtocol, kind: T): `${'Qmp' | 'GuestAgent'}${T}` {
  return `${protocol === 'QMP' ? 'Qmp' : 'GuestAgent'}${kind}`;
}

const WHERE: Record<QemuProtocol, string> = {
  QMP:
    'check that the QEMU process runs with `--chardev socket,path=...,server=on,wait=off --monitor chardev=...` ' +
    'and that no other client holds the monitor',
  'guest agent':
    'check that the VM has the `org.qemu.guest_agent.0` virtio-serial port on a unix socket chardev and that no ' +
    'other client holds it',
};

/** The socket could not be connected to (no such socket, nobody listening, permission). */
export class ProtocolUnavailableError extends Error {
  readonly type: 'QmpUnavailable' | 'GuestAgentUnavailable';
  constructor(
    readonly protocol: QemuProtocol,
    readonly socketPath: string,
    readonly reason: string,
  ) {
    super(`Cannot connect to the ${protocol} socket ${socketPath} (${reason}); ${WHERE[protocol]}.`);
    this.type = typeOf(protocol, 'Unavailable');
  }
}

/** The peer answered a command with an `error` reply; `errorClass` is its class (e.g. `CommandNotFound`). */
export class ProtocolCommandError extends Error {
  readonly type: 'QmpCommandFailed' | 'GuestAgentCommandFailed';
  constructor(
    readonly protocol: QemuProtocol,
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`${protocol === 'QMP' ? 'QMP' : 'Guest agent'} command ${command} failed: ${errorClass}: ${desc}`);
    this.type = typeOf(protocol, 'CommandFailed');
  }
}

/** No answer within the deadline. For the guest agent, the channel is resynchronised before the next command. */
export class ProtocolTimeoutError extends Error {
  readonly type: 'QmpTimeout' | 'GuestAgentTimeout';
  constructor(
    readonly protocol: QemuProtocol,
    readonly command: string,
    readonly timeoutMs: number,
  ) {
    super(
      `The ${protocol} did not answer ${command} within ${timeoutMs} ms; ` +
        (protocol === 'QMP'
          ? 'QEMU may be hung or overloaded: check the process, then retry.'
          : 'the agent may be absent, stopped or busy in the guest: retry, or snapshot without quiescing.'),
    );
    this.type = typeOf(protocol, 'Timeout');
  }
}

/** The socket closed (either side) while a command was pending, or a command was sent after it closed. */
export class ProtocolClosedError extends Error {
  readonly type: 'QmpConnectionClosed' | 'GuestAgentConnectionClosed';
  constructor(
    readonly protocol: QemuProtocol,
    readonly command: string,
    readonly reason: string,
  ) {
    super(`The ${protocol} connection closed before ${command} was answered (${reason}); reconnect to continue.`);
    this.type = typeOf(protocol, 'ConnectionClosed');
  }
}

/** The peer sent what the protocol does not allow (not JSON, a reply to no command, no greeting). */
export class ProtocolViolationError extends Error {
  readonly type: 'QmpProtocolViolation' | 'GuestAgentProtocolViolation';
  constructor(
    readonly protocol: QemuProtocol,
    readonly detail: string,
  ) {
    super(`The ${protocol} peer broke the protocol: ${detail}; ${WHERE[protocol]}.`);
    this.type = typeOf(protocol, 'ProtocolViolation');
  }
}

/** A disk's block node is not in the QEMU process (wrong node name, or the disk was detached). */
export class FleecingNodeNotFoundError extends Error {
  readonly type = 'FleecingNodeNotFound';
  constructor(
    readonly diskName: string,
    readonly nodeName: string,
  ) {
    super(
      `Disk ${diskName}: the QEMU process has no block node "${nodeName}"; check the disk's node name ` +
        '(query-named-block-nodes lists them) and that the disk is still attached.',
    );
  }
}

/** An NBD server already runs in the QEMU process, but not on the socket the views were to be exported on. */
export class FleecingNbdServerElsewhereError extends Error {
  readonly type = 'FleecingNbdServerElsewhere';
  constructor(readonly nbdSocket: string) {
    super(
      `The QEMU process already runs an NBD server, and nothing accepts connections on ${nbdSocket}; export the ` +
        'views on the socket that server listens on, or stop it (nbd-server-stop) first.',
    );
  }
}

/** Opening views failed, and removing what the attempt had added failed too: pieces of the view may remain. */
export class FleecingCleanupError extends Error {
  readonly type = 'FleecingCleanupFailed';
  constructor(
    readonly viewId: string,
    readonly failure: unknown,
    readonly cleanupFailure: unknown,
  ) {
    super(
      `Opening the views ${viewId} failed (${messageOf(failure)}), and removing what the attempt added failed too ` +
        `(${messageOf(cleanupFailure)}); run closeViews and abandonCheckpoint for this view again.`,
      { cause: failure },
    );
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * The closed set of failures of the per-host freeze guard (`./freeze-guard`). They cross the guard's socket as
 * `{ type, message, vmId?, agentError? }`, so a caller branches on `type`, not on the class.
 */
export const FreezeGuardErrorType = {
  /** The agent refused the freeze or did not answer it in time; the guard thaws the guest in case it froze late. */
  GuestFreezeFailed: 'GuestFreezeFailed',
  /** A thaw attempt failed (agent absent or silent); the guard keeps the lease and tries again a few times. */
  GuestThawFailed: 'GuestThawFailed',
  /** A renewal found no live lease: the VM was never frozen, was thawed, or its lease expired (and it was thawed). */
  FreezeLeaseLost: 'FreezeLeaseLost',
  /** No guard answers on the socket and none could be started. */
  FreezeGuardUnavailable: 'FreezeGuardUnavailable',
  /** The guard did not answer a request within its deadline. */
  FreezeGuardTimeout: 'FreezeGuardTimeout',
  /** A request or a reply that the guard protocol does not allow. */
  FreezeGuardProtocolViolation: 'FreezeGuardProtocolViolation',
  /** The guard could not do its own part (record the lease durably), so it did not freeze. */
  FreezeGuardFailed: 'FreezeGuardFailed',
} as const;

export type FreezeGuardErrorType = (typeof FreezeGuardErrorType)[keyof typeof FreezeGuardErrorType];

/** What the guest agent answered (or why it could not), as the guard reports it: the agent error's type and message. */
export interface AgentFailure {
  type: string;
  message: string;
}

/** Every failure of the freeze guard and its client; `type` says which one. */
export class FreezeGuardError extends Error {
  override readonly name = 'FreezeGuardError';
  constructor(
    readonly type: FreezeGuardErrorType,
    message: string,
    readonly details: { vmId?: string; agentError?: AgentFailure } = {},
  ) {
    super(message);
  }
}

/**
 * The agent refused `guest-fsfreeze-freeze` or did not answer it; carries the agent's answer. `thawing`: the freeze may
 * have reached the guest, so the guard thaws it.
 */
export class GuestFreezeFailedError extends FreezeGuardError {
  constructor(vmId: string, agentError: AgentFailure, thawing: boolean) {
    super(
      FreezeGuardErrorType.GuestFreezeFailed,
      `The guest of VM ${vmId} could not be frozen: ${agentError.message} ` +
        (thawing ? 'The freeze guard thaws it in case the freeze took effect late. ' : '') +
        'Retry, or snapshot without quiescing.',
      { vmId, agentError },
    );
  }
}

/** One thaw attempt failed; `retrying` says whether the guard tries again (it gives up after a few attempts). */
export class GuestThawFailedError extends FreezeGuardError {
  constructor(vmId: string, agentError: AgentFailure, retrying: boolean) {
    super(
      FreezeGuardErrorType.GuestThawFailed,
      `The guest of VM ${vmId} could not be thawed: ${agentError.message} ` +
        (retrying
          ? 'The freeze guard keeps trying; check that the VM runs and its agent answers.'
          : 'The freeze guard gave up: thaw it by hand (guest-fsfreeze-thaw) if the VM still runs.'),
      { vmId, agentError },
    );
  }
}

/** A renewal found the VM not frozen under a live lease, so the guest may have written since the freeze. */
export class FreezeLeaseLostError extends FreezeGuardError {
  constructor(vmId: string, reason: string) {
    super(
      FreezeGuardErrorType.FreezeLeaseLost,
      `VM ${vmId} is no longer frozen under a live lease (${reason}); what was opened since the freeze may not be ` +
        'consistent: freeze again and redo the step.',
      { vmId },
    );
  }
}
