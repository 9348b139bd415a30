/**
 * The closed set of failures the NBD client reports. Each error class below carries one of these as `type`, so a
 * caller (the QEMU driver) can branch on it without parsing messages.
 */
export const NbdErrorType = {
  /** Nothing listens on the socket path (server not started, already gone, or another path). */
  Unreachable: 'NbdUnreachable',
  /** The server refused an option of the handshake, or does not speak fixed-newstyle NBD. */
  HandshakeRefused: 'NbdHandshakeRefused',
  /** The server has no export of that name. */
  ExportNotFound: 'NbdExportNotFound',
  /** A metadata context asked for at connect (e.g. a dirty bitmap) is not offered for the export. */
  MetaContextUnavailable: 'NbdMetaContextUnavailable',
  /** A write to an export the server marked read-only: refused before sending. */
  ReadOnly: 'NbdReadOnly',
  /** A request this connection cannot send (too large, a context not negotiated, a command not advertised). */
  InvalidRequest: 'NbdInvalidRequest',
  /** The server answered a command with an error (an errno such as EIO, EINVAL, ENOSPC, EPERM). */
  ServerError: 'NbdServerError',
  /** The connection ended (server gone, or closed after a protocol error or a timeout) with commands unanswered. */
  ConnectionClosed: 'NbdConnectionClosed',
  /** The handshake or a command got no answer within the deadline; the connection is closed. */
  Timeout: 'NbdTimeout',
  /** The server sent bytes that break the protocol; the connection is closed. */
  ProtocolViolation: 'NbdProtocolViolation',
} as const;

export type NbdErrorType = (typeof NbdErrorType)[keyof typeof NbdErrorType];

/** Every error of the NBD client; `type` says which one. */
export class NbdError extends Error {
  override readonly name = 'NbdError';
  constructor(
    readonly type: NbdErrorType,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Nothing accepts connections on the socket path. */
export class NbdUnreachableError extends NbdError {
  constructor(
    readonly socketPath: string,
    cause: unknown,
  ) {
    const code = (cause as NodeJS.ErrnoException | undefined)?.code ?? String(cause);
    super(
      NbdErrorType.Unreachable,
      `Cannot connect to the NBD server at ${socketPath} (${code}); check that the server is running and exports there.`,
      { cause },
    );
  }
}

/** The server refused an option, with its own message when it sent one. */
export class NbdHandshakeError extends NbdError {
  constructor(
    /** What was being negotiated, e.g. `NBD_OPT_STRUCTURED_REPLY`. */
    readonly option: string,
    /** The server's reply code name, e.g. `NBD_REP_ERR_POLICY`, or why the client gave up. */
    readonly reply: string,
    /** The server's message, empty when it sent none. */
    readonly serverMessage: string,
  ) {
    const said = serverMessage ? `: ${serverMessage}` : '';
    super(NbdErrorType.HandshakeRefused, `The NBD server refused ${option} (${reply})${said}.`);
  }
}

/** The server has no export of this name. */
export class NbdExportNotFoundError extends NbdError {
  constructor(
    readonly exportName: string,
    readonly serverMessage: string,
  ) {
    const said = serverMessage ? ` (${serverMessage})` : '';
    super(
      NbdErrorType.ExportNotFound,
      `The NBD server has no export named "${exportName}"${said}; check the export name the view was opened with.`,
    );
  }
}

/** A metadata context requested at connect time is not offered for the export. */
export class NbdMetaContextUnavailableError extends NbdError {
  constructor(
    readonly exportName: string,
    readonly context: string,
    /** The contexts the server did select. */
    readonly offered: readonly string[],
  ) {
    super(
      NbdErrorType.MetaContextUnavailable,
      `The NBD export "${exportName}" does not offer the metadata context "${context}" (offered: ` +
        `${offered.length > 0 ? offered.join(', ') : 'none'}); for a dirty bitmap, export it with the view.`,
    );
  }
}

/** A write or flush on a read-only export. */
export class NbdReadOnlyError extends NbdError {
  constructor(
    readonly exportName: string,
    readonly command: string,
  ) {
    super(NbdErrorType.ReadOnly, `The NBD export "${exportName}" is read-only: ${command} refused.`);
  }
}

/** A request that cannot be sent on this connection; nothing was sent. */
export class NbdInvalidRequestError extends NbdError {
  constructor(reason: string) {
    super(NbdErrorType.InvalidRequest, `Invalid NBD request: ${reason}.`);
  }
}

/** NBD error values (doc/proto.md "Error values") by name; any other number is reported as `E<number>`. */
const ERRNO_NAMES: Record<number, string> = {
  1: 'EPERM',
  5: 'EIO',
  12: 'ENOMEM',
  22: 'EINVAL',
  28: 'ENOSPC',
  75: 'EOVERFLOW',
  95: 'ENOTSUP',
  108: 'ESHUTDOWN',
};

/** The name of an NBD error value. */
export function nbdErrnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `E${errno}`;
}

/** The server answered a command with an error. */
export class NbdServerError extends NbdError {
  /** The errno's name: `EIO`, `EINVAL`, `ENOSPC`, `EPERM`, ... */
  readonly code: string;
  constructor(
    /** The command, e.g. `NBD_CMD_READ`. */
    readonly command: string,
    readonly offset: number,
    readonly length: number,
    readonly errno: number,
    readonly serverMessage: string,
    /** Where the error happened, when the server said (NBD_REPLY_TYPE_ERROR_OFFSET). */
    readonly errorOffset?: number,
  ) {
    const code = nbdErrnoName(errno);
    const at = errorOffset === undefined ? '' : ` at ${errorOffset}`;
    const said = serverMessage ? `: ${serverMessage}` : '';
    super(
      NbdErrorType.ServerError,
      `The NBD server failed ${command} of ${length} bytes at offset ${offset} with ${code}${at}${said}.`,
    );
    this.code = code;
  }
}

/** The connection ended while commands were waiting for their replies. */
export class NbdConnectionClosedError extends NbdError {
  constructor(
    readonly socketPath: string,
    /** Commands that were unanswered. */
    readonly pending: number,
    reason: string,
    cause?: unknown,
  ) {
    super(
      NbdErrorType.ConnectionClosed,
      `The NBD connection to ${socketPath} closed with ${pending} command(s) unanswered (${reason}).`,
      { cause },
    );
  }
}

/** No answer within the deadline. */
export class NbdTimeoutError extends NbdError {
  constructor(
    readonly socketPath: string,
    /** What was waited for: `the handshake`, `NBD_CMD_READ of 262144 bytes at 0`, ... */
    readonly waitingFor: string,
    readonly timeoutMs: number,
  ) {
    super(
      NbdErrorType.Timeout,
      `The NBD server at ${socketPath} did not answer ${waitingFor} within ${timeoutMs} ms; the connection is closed.`,
    );
  }
}

/** The server broke the protocol. */
export class NbdProtocolError extends NbdError {
  constructor(reason: string) {
    super(NbdErrorType.ProtocolViolation, `The NBD server broke the protocol: ${reason}.`);
  }
}
