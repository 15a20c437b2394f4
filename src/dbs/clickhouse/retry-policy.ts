/**
 * How the mirror decides whether and when to try an insert again: full-jitter
 * backoff, the transient-vs-permanent verdict on an error, and the circuit
 * breaker that stops every table from hammering a server that is down.
 */

export interface BackoffOptions {
  baseBackoffMs: number;
  maxBackoffMs: number;
}

/**
 * Delay before retry number `attempt` (1 = after the first failure): a uniform
 * draw from [0, min(max, base * 2^(attempt-1))). Full jitter spreads the
 * retries of many writers instead of having them arrive together.
 */
export function fullJitterBackoff(attempt: number, options: BackoffOptions, random: () => number = Math.random): number {
  const exponent = Math.max(0, attempt - 1);
  const ceiling = Math.min(options.maxBackoffMs, options.baseBackoffMs * 2 ** exponent);
  const draw = Math.min(Math.max(random(), 0), 1);
  return Math.floor(draw * ceiling);
}

export const SEND_ERROR_KINDS = ['transient', 'permanent'] as const;
export type SendErrorKind = (typeof SEND_ERROR_KINDS)[number];

/**
 * ClickHouse error codes worth retrying: the server is overloaded, restarting,
 * lost its Keeper session, or the request was cut in transit. Codes from
 * src/Common/ErrorCodes.cpp in the ClickHouse repository.
 */
const TRANSIENT_CLICKHOUSE_CODES = new Map<string, string>([
  ['3', 'UNEXPECTED_END_OF_FILE'],
  ['159', 'TIMEOUT_EXCEEDED'],
  ['160', 'TOO_SLOW'],
  ['173', 'CANNOT_ALLOCATE_MEMORY'],
  ['201', 'QUOTA_EXPIRED'],
  ['202', 'TOO_MANY_SIMULTANEOUS_QUERIES'],
  ['203', 'NO_FREE_CONNECTION'],
  ['209', 'SOCKET_TIMEOUT'],
  ['210', 'NETWORK_ERROR'],
  ['225', 'NO_ZOOKEEPER'],
  ['236', 'ABORTED'],
  ['241', 'MEMORY_LIMIT_EXCEEDED'],
  ['242', 'TABLE_IS_READ_ONLY'],
  // A full disk is an outage of the server's storage: retried, and the breaker opens, rather than each batch
  // becoming a gap at its first refusal. A server that still answers its ping is up, though: after
  // maxAttempts probes it refused, the batch becomes a gap (BatchWriter.send), so one lasting longer leaves gaps.
  ['243', 'NOT_ENOUGH_SPACE'],
  ['244', 'UNEXPECTED_ZOOKEEPER_ERROR'],
  ['252', 'TOO_MANY_PARTS'],
  ['279', 'ALL_CONNECTION_TRIES_FAILED'],
  ['285', 'TOO_FEW_LIVE_REPLICAS'],
  ['286', 'UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE'],
  // The insert may or may not have landed; the batch's deduplication token makes the retry safe.
  ['319', 'UNKNOWN_STATUS_OF_INSERT'],
  ['364', 'RECEIVED_ERROR_TOO_MANY_REQUESTS'],
  ['394', 'QUERY_WAS_CANCELLED'],
  ['425', 'SYSTEM_ERROR'],
  // The server's thread pools are full: it could not start the insert's work.
  ['439', 'CANNOT_SCHEDULE_TASK'],
  ['999', 'KEEPER_EXCEPTION'],
]);

/** Socket-level failures from Node and undici: the request never got an answer. */
const TRANSIENT_NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ENETUNREACH',
  'ENETDOWN',
  'EAI_AGAIN',
  'ENOTFOUND',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
]);

interface ErrorFields {
  code?: unknown;
  type?: unknown;
  message?: unknown;
  statusCode?: unknown;
  status?: unknown;
}

/** ClickHouseError carries the server's numeric code as a string, e.g. "60". */
export function clickHouseCodeOf(error: unknown): string | undefined {
  const code = (error as ErrorFields | null)?.code;
  return typeof code === 'string' && /^\d+$/.test(code) ? code : undefined;
}

function httpStatus(error: unknown): number | undefined {
  const fields = error as ErrorFields | null;
  const status = fields?.statusCode ?? fields?.status;
  return typeof status === 'number' ? status : undefined;
}

/**
 * Transient errors are retried, permanent ones turn the batch into a gap at
 * once. A ClickHouse code not known to be transient is permanent: the server
 * understood the insert and rejected it (unknown table, bad data, denied), and
 * the same bytes would be rejected again. Anything without a ClickHouse code
 * (a dropped socket, "socket hang up", the client's "Timeout error.", a
 * proxy's 502 page) is transient unless it carries an HTTP 4xx status other
 * than 408/429 or is a JavaScript TypeError, RangeError or ReferenceError:
 * retries are bounded and deduplicated, so guessing wrong costs a few
 * requests, while a wrong "permanent" would cost a gap.
 */
export function classifySendError(error: unknown): SendErrorKind {
  const code = clickHouseCodeOf(error);
  if (code !== undefined) return TRANSIENT_CLICKHOUSE_CODES.has(code) ? 'transient' : 'permanent';

  const networkCode = (error as ErrorFields | null)?.code;
  if (typeof networkCode === 'string' && TRANSIENT_NETWORK_CODES.has(networkCode)) return 'transient';

  const status = httpStatus(error);
  if (status !== undefined && status >= 400 && status < 500 && status !== 408 && status !== 429) return 'permanent';
  if (status !== undefined) return 'transient';

  // A bug on our side of the wire (serializing, building the request) fails the same way every time.
  if (error instanceof TypeError || error instanceof RangeError || error instanceof ReferenceError) return 'permanent';
  return 'transient';
}

const MAX_DESCRIPTION_LENGTH = 500;

/** How logs, /health and gap reasons name an empty error answer (see isEmptyErrorAnswer). */
export const EMPTY_ERROR_ANSWER = "an HTTP error answer with an empty body, not ClickHouse's (a proxy in front of it, or a request refused unread)";

/**
 * An HTTP error answer with an empty body, which ClickHouse itself never
 * gives (its errors say what failed): a bare 431 for a request refused
 * before it was read, or a proxy's 502. @clickhouse/client turns it into a
 * plain Error with an empty message and no code, where a failure to get any
 * answer has a socket code (ECONNREFUSED, ...) or says "Timeout error.".
 * (A proxy's page that has a body reaches us as that body, and reads as such.)
 */
export function isEmptyErrorAnswer(error: unknown): boolean {
  return error instanceof Error && Object.getPrototypeOf(error) === Error.prototype && error.message === '' && (error as ErrorFields).code === undefined;
}

/** A one-line description for logs and gap reasons; capped so a proxy's HTML error page does not end up in Postgres. */
export function describeSendError(error: unknown): string {
  const fields = (error ?? {}) as ErrorFields;
  const message = typeof fields.message === 'string' ? fields.message.trim() : String(error);
  const code = clickHouseCodeOf(error);
  let description: string;
  if (code !== undefined) {
    const type = typeof fields.type === 'string' ? fields.type : TRANSIENT_CLICKHOUSE_CODES.get(code);
    description = `ClickHouse code ${code}${type ? ` ${type}` : ''}: ${message}`;
  } else if (typeof fields.code === 'string' && !message.includes(fields.code)) {
    description = `${fields.code}: ${message}`;
  } else if (isEmptyErrorAnswer(error)) {
    description = EMPTY_ERROR_ANSWER;
  } else {
    description = message;
  }
  return description.replace(/\s+/g, ' ').slice(0, MAX_DESCRIPTION_LENGTH);
}

/**
 * What /health, a public route, may say of an error: its kind and code
 * (a ClickHouse code and type, a socket code, an HTTP status), never the
 * message, which can name hosts, ports, users, databases and grants. The
 * whole description goes to the log. An error made here may carry a
 * `publicReason` of its own, or wrap the one it is about as its `cause`.
 */
export function publicSendError(error: unknown, seen: Set<unknown> = new Set()): string {
  const fields = (error ?? {}) as ErrorFields & { publicReason?: unknown; cause?: unknown };
  if (typeof fields.publicReason === 'string') return fields.publicReason;
  // A cause chain that comes back on itself (A's cause B, B's cause A) ends at the error it came back to.
  seen.add(error);
  if (fields.cause !== undefined && !seen.has(fields.cause)) return publicSendError(fields.cause, seen);
  const code = clickHouseCodeOf(error);
  if (code !== undefined) {
    const type = typeof fields.type === 'string' && /^[A-Z0-9_]{1,64}$/.test(fields.type) ? fields.type : TRANSIENT_CLICKHOUSE_CODES.get(code);
    return `ClickHouse code ${code}${type ? ` ${type}` : ''}`;
  }
  if (typeof fields.code === 'string' && /^[0-9A-Z_]{2,32}$/.test(fields.code)) return `no answer (${fields.code})`;
  if (isEmptyErrorAnswer(error)) return EMPTY_ERROR_ANSWER;
  const status = httpStatus(error);
  if (status !== undefined) return `HTTP ${status}`;
  // @clickhouse/client's own words for its request_timeout.
  if (fields.message === 'Timeout error.') return 'no answer within the request timeout';
  return 'failed (the log says how)';
}

/** An error of ours whose message names the server: `publicReason` is what /health shows of it (publicSendError). */
export class MirrorSendError extends Error {
  constructor(
    message: string,
    readonly publicReason: string,
  ) {
    super(message);
    this.name = 'MirrorSendError';
  }
}

export interface BreakerOptions {
  /** Consecutive failed attempts (across all tables) that open the breaker. */
  failureThreshold: number;
  /** How long an open breaker blocks inserts before one probe is let through. */
  openMs: number;
}

export type BreakerState = 'closed' | 'open' | 'half_open';

/** What a sender may do now: send normally, send as the single half-open probe, or wait for the breaker to change. */
export type BreakerAdmission = 'send' | 'probe' | 'wait';

/**
 * One breaker per ClickHouse server, shared by all tables. It holds no timers:
 * open turns into half-open when `openMs` has passed on the clock it is given,
 * so the writer decides when to look again.
 */
export class CircuitBreaker {
  private consecutiveFailures = 0;
  private openedAt: number | null = null;
  private probeInFlight = false;

  constructor(
    private readonly options: BreakerOptions,
    private readonly now: () => number,
  ) {}

  get state(): BreakerState {
    if (this.openedAt === null) return 'closed';
    return this.now() - this.openedAt >= this.options.openMs ? 'half_open' : 'open';
  }

  /** True while a half-open probe is out: nobody else may send until it reports. */
  get probing(): boolean {
    return this.probeInFlight;
  }

  msUntilHalfOpen(): number {
    if (this.openedAt === null) return 0;
    return Math.max(0, this.openedAt + this.options.openMs - this.now());
  }

  admit(): BreakerAdmission {
    switch (this.state) {
      case 'closed':
        return 'send';
      case 'open':
        return 'wait';
      case 'half_open':
        if (this.probeInFlight) return 'wait';
        this.probeInFlight = true;
        return 'probe';
    }
  }

  /** The server answered: close. */
  recordSuccess(): void {
    this.consecutiveFailures = 0;
    this.openedAt = null;
    this.probeInFlight = false;
  }

  /**
   * The server did not answer a send or the probe. Only a success resets the
   * count, so once past the threshold every failure, a failed probe included,
   * restarts the open period. Only the probe's own failure lets the next
   * probe go: an insert sent before the breaker opened can fail while the
   * probe is still out, and must not let a second one start beside it.
   */
  recordFailure(of: 'send' | 'probe'): void {
    this.consecutiveFailures += 1;
    if (this.consecutiveFailures >= this.options.failureThreshold) this.openedAt = this.now();
    if (of === 'probe') this.probeInFlight = false;
  }
}
