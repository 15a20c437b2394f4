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

export function createPool(url: string, max: number): Pool {
  return new Pool({
    connectionString: url,
    max,
    options: '-c TimeZone=UTC',
    connectionTimeoutMillis: 5_000,
    types: {
      getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
        oid === TIMESTAMPTZ_OID ? timestamptzToIso : types.getTypeParser(oid, format as 'text')) as typeof types.getTypeParser,
    },
  });
}

export function createKysely(pool: Pool): Kysely<DB> {
  return new Kysely<DB>({ dialect: new PostgresDialect({ pool }) });
}
