import { Kysely, sql } from 'kysely';
import { Pool } from 'pg';
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
