import { randomBytes } from 'node:crypto';
import { Kysely } from 'kysely';
import { Client, Pool } from 'pg';
import { DB } from '../../src/dbs/postgres/database';
import { createKysely, createPool } from '../../src/dbs/postgres/postgres-pool';
import { withDatabase } from './global-setup';

export interface TestDatabase {
  /** The pool under db (COPY needs a connection of its own). */
  pool: Pool;
  url: string;
  name: string;
  db: Kysely<DB>;
  /** Closes this spec's pool and drops its database. */
  drop(): Promise<void>;
}

/** A fresh, migrated database for one spec, cloned from the run's template. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const adminUrl = process.env.TEST_PG_ADMIN_URL;
  const template = process.env.TEST_PG_TEMPLATE;
  if (!adminUrl || !template) throw new Error('test Postgres is not set up: run specs through jest (globalSetup)');
  const name = `test_${randomBytes(6).toString('hex')}`;
  const admin = new Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`create database ${name} template ${template}`);
  } finally {
    await admin.end();
  }
  const url = withDatabase(adminUrl, name);
  // drop() force-closes this database's connections; createPool's listeners keep that from crashing the spec.
  const pool = createPool(url, 5);
  const db = createKysely(pool);
  return {
    url,
    name,
    db,
    pool,
    drop: async () => {
      await db.destroy();
      const client = new Client({ connectionString: adminUrl });
      await client.connect();
      await client.query(`drop database if exists ${name} with (force)`);
      await client.end();
    },
  };
}

/**
 * Gives the app's future sessions on `database` these settings (ALTER
 * DATABASE ... SET), then ends the sessions its `pool` holds and waits until
 * the pool has let them all go, so its next query opens a session with them.
 */
export async function setAppSessionDefaults(database: TestDatabase, pool: Pool, settings: Record<string, string>): Promise<void> {
  const admin = new Client({ connectionString: database.url });
  await admin.connect();
  try {
    await admin.query('set default_transaction_read_only = off'); // this session writes even when the database is made read-only
    for (const [name, value] of Object.entries(settings)) {
      await admin.query(`alter database ${database.name} set ${name} = '${value.replace(/'/g, "''")}'`);
    }
    await admin.query(`select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()`);
  } finally {
    await admin.end();
  }
  for (let i = 0; pool.totalCount > 0; i++) {
    if (i > 200) throw new Error(`the pool still holds ${pool.totalCount} connection(s) after their sessions were ended`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** A fresh database in `encoding` on the run's Postgres (its URL, with the admin's credentials), dropped afterwards. */
export async function withDatabaseEncoded(encoding: string, use: (url: URL) => Promise<void>): Promise<void> {
  const admin = new Client({ connectionString: process.env.TEST_PG_ADMIN_URL });
  await admin.connect();
  const name = `${encoding.toLowerCase()}_${process.pid}_${Date.now()}`;
  try {
    await admin.query(`create database ${name} encoding '${encoding}' lc_collate 'C' lc_ctype 'C' template template0`);
    const url = new URL(process.env.TEST_PG_ADMIN_URL!);
    url.pathname = `/${name}`;
    await use(url);
  } finally {
    await admin.query(`drop database if exists ${name} with (force)`);
    await admin.end();
  }
}
