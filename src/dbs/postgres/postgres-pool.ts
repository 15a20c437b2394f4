import { Kysely, PostgresDialect } from 'kysely';
import { Pool, types } from 'pg';
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
  return `${m[1]}T${m[2]}.${(m[3] ?? '').padEnd(6, '0')}Z`;
}

/**
 * `statementTimeoutMs` bounds every statement on the server side, where
 * cancelling is safe (the statement and its transaction roll back); a
 * client-side timeout could give up on a write that later commits. The API
 * sets it; operator commands leave it off (0) for their long scans.
 */
export function createPool(url: string, max: number, options: { statementTimeoutMs?: number } = {}): Pool {
  const timeout = options.statementTimeoutMs ? ` -c statement_timeout=${Math.floor(options.statementTimeoutMs)}` : '';
  return new Pool({
    connectionString: url,
    max,
    // ISO dates are what timestamptzToIso and the backfill's COPY (ClickHouse DateTime64 text) read.
    options: `-c TimeZone=UTC -c DateStyle=ISO${timeout}`,
    connectionTimeoutMillis: 5_000,
    // Notice a peer that vanished without closing the connection.
    keepAlive: true,
    types: {
      getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
        oid === TIMESTAMPTZ_OID ? timestamptzToIso : types.getTypeParser(oid, format as 'text')) as typeof types.getTypeParser,
    },
  });
}

export function createKysely(pool: Pool): Kysely<DB> {
  return new Kysely<DB>({ dialect: new PostgresDialect({ pool }) });
}
