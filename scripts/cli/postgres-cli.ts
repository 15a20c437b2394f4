import { Kysely, sql } from 'kysely';
import { DatabaseError, Pool } from 'pg';
import { AppConfig } from '../../src/config/app-config';
import { redactUrl } from '../../src/config/redact-url';
import { DB } from '../../src/dbs/postgres/database';
import { resolvePostgres } from '../../src/dbs/postgres/local-postgres';
import { createKysely, createPool, PoolOptions } from '../../src/dbs/postgres/postgres-pool';
import { errorText } from '../../src/error-text';

export interface PostgresConnection {
  db: Kysely<DB>;
  /** The pool under db, for COPY (the backfill's bulk copy). */
  pool: Pool;
  /** The server, without its password, for messages. */
  at: string;
  /** Its URL, without the password. */
  redactedUrl: string;
  close(): Promise<void>;
}

/** The driver's own texts for a connection that failed, was cut or could not be had from the pool (pg, pg-pool). */
const DRIVER_CONNECTION_FAILURE =
  /^(Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|Client was closed and is not queryable)/;

/**
 * Node's socket errors, which pg hands on as they are: a connection it could not open (refused, no such
 * host), or one cut under a query in flight (reset, timed out, a write to a closed socket).
 */
const SOCKET_FAILURE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

/**
 * An error Postgres or its driver raised: Postgres's own (with a SQLSTATE), or the connection's. A bare socket
 * error reaching a command's top is Postgres's: ClickHouse's are named where they happen (ClickHouseHistory).
 */
function fromPostgres(error: unknown): boolean {
  if (error instanceof DatabaseError) return true;
  if (!(error instanceof Error)) return false;
  if (SOCKET_FAILURE_CODES.has((error as NodeJS.ErrnoException).code ?? '')) return true;
  return DRIVER_CONNECTION_FAILURE.test(error.message);
}

/**
 * A Postgres failure in the middle of a command (a count, a page, a
 * checkpoint) comes as the driver's bare text ("Connection terminated
 * unexpectedly"), which names neither the server nor what to do: named
 * here, with `then` (if given), what running the command again does. Anything else
 * (ClickHouse's failures, which ClickHouseHistory names; a COPY's; a run
 * lock's) is returned as it is.
 */
export function namingPostgres(at: string, error: unknown, then?: string): unknown {
  return fromPostgres(error) ? new Error(`${at} failed: ${errorText(error)}${then ? `; ${then}` : ''}`) : error;
}

/**
 * An operator command's Postgres: DATABASE_URL or the embedded server, tried
 * with one query before the command starts, so that a server that cannot be
 * used fails the command with its (password-free) URL and the reason, not
 * with whatever the first real statement throws.
 */
export async function openPostgres(config: AppConfig, log: (line: string) => void, connections: number, options: PoolOptions = {}): Promise<PostgresConnection> {
  const server = await resolvePostgres(config.postgres, log);
  // No statement timeout, not even a role's or DATABASE_URL's: backfill's count of a scope and verify's
  // group-by over all of history outlast any a request would have, and were cancelled by one every run.
  const pool = createPool(server.url, connections, { statementTimeoutMs: 0, ...options });
  const db = createKysely(pool);
  const close = async () => {
    await db.destroy();
    await server.stop?.();
  };
  const redactedUrl = redactUrl(server.url);
  const at = `Postgres at ${redactedUrl}`;
  try {
    await sql`select 1`.execute(db);
  } catch (error) {
    await close();
    throw new Error(`cannot use ${at}: ${errorText(error)}`);
  }
  return { db, pool, at, redactedUrl, close };
}
