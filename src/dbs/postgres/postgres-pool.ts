import { Kysely, PostgresDialect } from 'kysely';
import { Client, Pool, PoolClient, types } from 'pg';
import { within } from '../../within';
import { DB } from './database';

const TIMESTAMPTZ_OID = 1184;

/**
 * Postgres prints timestamptz as "2026-11-22 10:00:00.123456+00" (the session
 * time zone is pinned to UTC below). We turn that into ISO-8601 with all six
 * fractional digits instead of a JS Date, which would drop the microseconds.
 */
export function timestamptzToIso(text: string): string {
  const m = /^(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2})(?:\.(\d{1,6}))?\+00$/.exec(text);
  if (!m) throw new Error(`unexpected timestamptz text "${text}" (is the session time zone UTC?)`);
  const iso = `${m[1]}T${m[2]}.${(m[3] ?? '').padEnd(6, '0')}Z`;
  // V8 keeps a concatenation as a rope of its pieces (~216 bytes held per timestamp, measured); reading a
  // character flattens it into one 27-character string (~59). Every timestamp of every row read passes here,
  // and a delete holds three per deleted key until the mirror has taken them.
  iso.charCodeAt(0);
  return iso;
}

/**
 * pg's message when `query_timeout` gave up waiting for the server's answer.
 * pg keeps the connection when that happens, with the unanswered statement
 * (and perhaps an open transaction) still on it.
 */
const QUERY_TIMEOUT_MESSAGE = 'Query read timeout';

/**
 * A server that stops answering (a stopped process, a hung disk, a path that
 * drops packets) never reaches its own statement_timeout, and its kernel keeps
 * the TCP connection alive, so keepalive does not notice either. When the
 * client-side timeout fails a query, this client closes its socket at once:
 * whatever was sent and not committed is rolled back by Postgres once it
 * notices, the caller's rollback fails fast instead of waiting behind the
 * unanswered statement, and the pool drops the client instead of lending a
 * connection in an unknown state to the next request.
 *
 * Promise-style queries (Kysely's) need this; pg-pool's own `pool.query()`
 * (the health check's) passes a callback and releases a failed client with
 * its error, which ends it: there the give-up is only counted. The API
 * streams no cursors, the one form this does not cover.
 */
export class AbandonOnTimeoutClient extends Client {
  /** Emitted when the client gives its connection up (counted by postgres_connections_abandoned_total). */
  static readonly ABANDONED = 'abandoned';

  // pg's overloads return a promise, a submittable or nothing; each passes through unchanged.
  override query(...args: unknown[]): any {
    const callback = args[args.length - 1];
    if (typeof callback === 'function') {
      args[args.length - 1] = (error: unknown, ...rest: unknown[]) => {
        if ((error as Error)?.message === QUERY_TIMEOUT_MESSAGE) this.emit(AbandonOnTimeoutClient.ABANDONED);
        return (callback as (...a: unknown[]) => unknown)(error, ...rest);
      };
    }
    const result: unknown = (Client.prototype.query as (...a: unknown[]) => unknown).apply(this, args);
    if (result instanceof Promise) {
      result.catch((error: unknown) => {
        if ((error as Error)?.message !== QUERY_TIMEOUT_MESSAGE) return;
        this.end().catch(() => undefined);
        this.emit(AbandonOnTimeoutClient.ABANDONED);
      });
    }
    return result;
  }
}

export interface PoolOptions {
  /**
   * Bounds every statement on the server side, where cancelling is safe (the
   * statement and its transaction roll back). 0: none, whatever the URL or the
   * role sets. Unset: the URL's or the role's, if any.
   */
  statementTimeoutMs?: number;
  /**
   * How long the client waits for any answer before it gives the connection
   * up; for a server that no longer answers at all, so it must be longer than
   * the statement timeout. 0 or unset: wait for ever.
   */
  clientTimeoutMs?: number;
  /** Told of the errors pg reports when the server ends a connection, idle or lent out (one loss can bring two); the default says nothing. */
  onConnectionLost?: (error: Error) => void;
  /** How long an idle connection is kept; 0 keeps it for good. Unset: pg-pool's 10 s. */
  idleTimeoutMs?: number;
}

/**
 * Every pool's sessions carry this process's id: pg_stat_activity then says
 * whose a session is (a backfill's "lock held by" message names it), and a
 * process stopping the embedded server does not count a session of its own
 * that has not closed yet as another process's (sessionsOfOtherProcesses).
 */
export const POOL_APPLICATION_NAME = `tracing-api pid ${process.pid}`;

/**
 * The API sets both timeouts; operator commands turn the statement timeout off
 * (a role's or the URL's too) for their long scans, and set no client timeout.
 * A write the client gave up on is not committed unless the give-up
 * came while its COMMIT was in flight (the one window no client can close):
 * every span and node write runs in an explicit transaction for that reason.
 * (The mirror's gap records are single inserts; one committed after a
 * give-up is replayed like any other, which is harmless.)
 */
export function createPool(url: string, max: number, options: PoolOptions = {}): Pool {
  const statementTimeout = options.statementTimeoutMs !== undefined ? ` -c statement_timeout=${Math.floor(options.statementTimeoutMs)}` : '';
  const { connectionString, urlOptions } = withoutUrlOptions(url);
  const pool = new Pool({
    connectionString,
    max,
    application_name: POOL_APPLICATION_NAME,
    // ISO dates are what timestamptzToIso and the backfill's COPY (ClickHouse DateTime64 text) read. After the
    // URL's own (a search_path, say), so that these win where both set one.
    options: `${urlOptions ? `${urlOptions} ` : ''}-c TimeZone=UTC -c DateStyle=ISO${statementTimeout}`,
    query_timeout: options.clientTimeoutMs || undefined,
    Client: AbandonOnTimeoutClient,
    connectionTimeoutMillis: 5_000,
    ...(options.idleTimeoutMs !== undefined && { idleTimeoutMillis: options.idleTimeoutMs }),
    // Notice a peer that vanished without closing the connection: probes start after 10 s of silence, not the
    // kernel's default 2 hours, so a command without a client timeout fails in minutes instead of hanging.
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000,
    types: {
      getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
        oid === TIMESTAMPTZ_OID ? timestamptzToIso : types.getTypeParser(oid, format as 'text')) as typeof types.getTypeParser,
    },
  });
  // When the server ends a connection (a restart, a failover, pg_terminate_backend), pg emits 'error'
  // on the client, and an unheard 'error' event crashes the process. pg-pool listens only while the
  // client is idle, and then re-emits it on the pool, so both get a listener: the client's own, for
  // its whole life, is the one that reports. A lent-out client's query fails with the same error
  // (the API answers 503) and the pool drops the client when it comes back.
  const onConnectionLost = options.onConnectionLost ?? (() => undefined);
  const connected = new Set<PoolClient>();
  pool.on('connect', (client) => {
    client.on('error', onConnectionLost);
    connected.add(client);
  });
  pool.on('remove', (client) => connected.delete(client));
  pool.on('error', () => undefined);
  connectedClients.set(pool, connected);
  return pool;
}

/**
 * The URL without the parameters by which pg would replace the pool's own settings, and the settings among
 * them, as `-c` options to go before the pool's. pg lets what the URL says replace the pool's config whole:
 * `?options=-c search_path=...` in DATABASE_URL dropped the pool's TimeZone, DateStyle and statement_timeout
 * (every timestamp read then failed on a server not in UTC); `?statement_timeout=` went as a startup
 * parameter, which Postgres applies after `options`; an application_name of the URL's hid the pool's
 * sessions from the embedded server's count of other processes'; a `query_timeout` (as a string: '0' failed
 * every query at once) replaced DB_CLIENT_TIMEOUT_MS. The other parameters are left byte for byte as they
 * were: rebuilt by URLSearchParams, `host=/var/run/...` became `%2F...`, which pg-connection-string then
 * encoded once more in a URL with a stray `%` in its password.
 */
export function withoutUrlOptions(url: string): { connectionString: string; urlOptions: string | undefined } {
  // A '?' after the fragment's '#' starts no query.
  const fragment = url.indexOf('#');
  const at = url.indexOf('?');
  if (at < 0 || (fragment >= 0 && at > fragment)) return { connectionString: url, urlOptions: undefined };
  const pairs = url.slice(at + 1, fragment < 0 ? undefined : fragment).split('&');
  const kept: string[] = [];
  const options: string[] = [];
  const settings: string[] = [];
  for (const pair of pairs) {
    const equals = pair.indexOf('=');
    const name = formDecoded(equals < 0 ? pair : pair.slice(0, equals));
    const value = equals < 0 ? '' : formDecoded(pair.slice(equals + 1));
    if (name === 'options') {
      options.push(value);
    } else if (SETTINGS_AS_PARAMETERS.includes(name)) {
      // An empty value pg ignored; as a setting Postgres would refuse every connection. Postgres splits
      // options at whitespace, and a backslash keeps the next character.
      if (value) settings.push(`-c ${name}=${value.replace(/([\\\s])/g, '\\$1')}`);
    } else if (name !== 'application_name' && name !== 'query_timeout') {
      kept.push(pair);
    }
  }
  if (kept.length === pairs.length) return { connectionString: url, urlOptions: undefined };
  const connectionString = `${url.slice(0, at)}${kept.length ? `?${kept.join('&')}` : ''}${fragment < 0 ? '' : url.slice(fragment)}`;
  return { connectionString, urlOptions: [...options, ...settings].filter(Boolean).join(' ') || undefined };
}

/** A query string's part as URLSearchParams reads it: '+' a space, each run of %XX decoded, a stray '%' left as it is. */
function formDecoded(part: string): string {
  return part.replace(/\+/g, ' ').replace(/(?:%[0-9a-fA-F]{2})+/g, (run) => {
    try {
      return decodeURIComponent(run);
    } catch {
      return run;
    }
  });
}

/** URL parameters pg sends as startup parameters of their own (ConnectionParameters.getStartupConf). */
const SETTINGS_AS_PARAMETERS = ['statement_timeout', 'lock_timeout', 'idle_in_transaction_session_timeout'];

/** Each pool's connected clients; a client leaves with the pool's 'remove', once its connection has closed. */
const connectedClients = new WeakMap<Pool, Set<PoolClient>>();

/**
 * How long endPool waits: for sessions still lent out to come back (one stuck
 * on a lock, of a request shutdown gave up on, would hold it until its
 * statement timeout), then for connections to close (a server that no longer
 * answers never closes its end). What is left ends with the process.
 */
const END_POOL_WAIT_MS = 2_000;

/**
 * Ends a pool from createPool and resolves once its connections have closed,
 * or after END_POOL_WAIT_MS. The pool, not a Kysely over it, owns them:
 * Kysely's destroy() ends the pool only if a query went through Kysely, and
 * pg-pool's end() resolves once its clients have come back and been asked to
 * close, not once they have. A server stopped right after (the embedded one)
 * would end the sessions left and each would be reported as a lost connection.
 */
export async function endPool(pool: Pool): Promise<void> {
  const connected = connectedClients.get(pool) ?? new Set();
  const closed = new Promise<void>((done) => {
    const check = () => connected.size === 0 && (pool.off('remove', check), done());
    pool.on('remove', check);
    check();
  });
  await within(Promise.all([pool.end(), closed]), END_POOL_WAIT_MS, () => undefined);
}

export function createKysely(pool: Pool): Kysely<DB> {
  return new Kysely<DB>({ dialect: new PostgresDialect({ pool }) });
}
