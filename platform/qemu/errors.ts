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
