/**
 * What a Postgres error says about the server, as opposed to the statement:
 * one place that reads pg's codes and messages, for the HTTP layer (a 503
 * the caller retries) and for the embedded server's start (join again).
 */

/** Socket errors: the server is unreachable or the connection broke. */
const UNAVAILABLE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND']);
// SQLSTATE classes: 08 connection exception; 53 insufficient resources (disk full, out of memory, too many
// connections); 57 operator intervention (57014: statement_timeout fired behind a lock or on an overloaded
// server, so the write rolled back; 57P01-03: shutting down, starting up).
const UNAVAILABLE_SQLSTATE_CLASSES = ['08', '53', '57'];
// Codes in those classes a retry would only repeat. 08P01: a protocol violation (our bug);
// 53400: a configured limit (temp_file_limit) the same request exceeds again; 57P04: the database was dropped.
const NOT_TRANSIENT_SQLSTATES = new Set(['08P01', '53400', '57P04']);
// pg sets no code on these. "Query read timeout": the server stopped answering and the client gave up (the
// pool's query_timeout); "Client was closed": a rollback tried on the connection given up a moment before.
const UNAVAILABLE_MESSAGES = [
  /Connection terminated/i,
  /timeout exceeded when trying to connect/i,
  /Client has encountered a connection error/i,
  /connection.*closed/i,
  /Query read timeout/i,
  /Client was closed and is not queryable/i,
];

/** The server stopping, starting, or no longer there: a subset of isDatabaseUnavailable. */
const WENT_AWAY_CODES = new Set(['57P01', '57P02', '57P03', 'ECONNREFUSED', 'ECONNRESET']);
const WENT_AWAY_MESSAGE = /Connection terminated/i;

type PgLikeError = { code?: string; message?: string; errors?: unknown[] };

const isUnavailableSqlState = (code: string) =>
  /^[0-9A-Z]{5}$/.test(code) && !NOT_TRANSIENT_SQLSTATES.has(code) && UNAVAILABLE_SQLSTATE_CLASSES.includes(code.slice(0, 2));

/**
 * Postgres is unreachable, going away or short of something: the same
 * statement can succeed later, so the caller should retry, not fix it.
 */
export function isDatabaseUnavailable(error: unknown): boolean {
  const e = error as PgLikeError;
  if (e?.code && (UNAVAILABLE_CODES.has(e.code) || isUnavailableSqlState(e.code))) return true;
  if (Array.isArray(e?.errors) && e.errors.some(isDatabaseUnavailable)) return true; // AggregateError from dual-stack connects
  return typeof e?.message === 'string' && UNAVAILABLE_MESSAGES.some((re) => re.test(e.message!));
}

/**
 * The server itself stopped (or is stopping or starting) under the
 * connection, or nothing listens: narrower than isDatabaseUnavailable. A
 * command that joined an embedded server another process started reads
 * this as "that server was stopped", and starts one itself; a server short
 * of connections or disk is still there, and its error is the answer.
 */
export function serverWentAway(error: unknown): boolean {
  const e = error as PgLikeError;
  if (e?.code && WENT_AWAY_CODES.has(e.code)) return true;
  return typeof e?.message === 'string' && WENT_AWAY_MESSAGE.test(e.message);
}

/** Socket errors on a connection that had reached the server: what it sent last may have been a COMMIT. */
const CUT_OFF_CODES = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', '57P01', '57P02']);
/**
 * pg's words for a connection lost or given up once in use (not one that never connected). A transaction
 * given up on reports the ROLLBACK Kysely then tries on the closed client: "Client was closed and is not
 * queryable" hides the COMMIT's own "Query read timeout".
 */
const CUT_OFF_MESSAGES = [/Connection terminated/i, /Query read timeout/i, /Client has encountered a connection error/i, /Client was closed and is not queryable/i];

/**
 * A write failed in a way that does not say whether Postgres committed it:
 * the connection was cut, or the client gave up waiting (a COMMIT held by a
 * synchronous standby, an fsync stall), or the session was terminated, while
 * the transaction was under way. The caller gets an error; the rows may be
 * stored all the same. A refusal the server answered (a constraint, a
 * statement timeout, a read-only server) or a connection that never opened
 * says the write did not commit.
 */
export function leavesCommitUnknown(error: unknown): boolean {
  const e = error as PgLikeError & { syscall?: string };
  // Never connected: the pool's connect timeout ("Connection terminated due to connection timeout"), or a
  // socket error while connecting. Nothing was sent.
  if (e?.syscall === 'connect' || (typeof e?.message === 'string' && /due to connection timeout/i.test(e.message))) return false;
  if (e?.code && CUT_OFF_CODES.has(e.code)) return true;
  return typeof e?.message === 'string' && CUT_OFF_MESSAGES.some((re) => re.test(e.message!));
}
