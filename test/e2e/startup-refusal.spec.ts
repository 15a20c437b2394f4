import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AddressInfo, createServer } from 'node:net';
import { Client } from 'pg';
import { ApiKeyService } from '../../src/auth/api-key.service';
import { ApiKeysRepository } from '../../src/auth/api-keys.repository';
import { createKysely, createPool } from '../../src/dbs/postgres/postgres-pool';
import { runApiUntilExit, startApiProcess } from '../../scripts/cli/api-process';
import { freePort } from '../../scripts/cli/free-port';
import { createTestDatabase, withDatabaseEncoded } from '../support/postgres';

/**
 * A start the API must refuse, as an operator meets it: `node main.js` on the
 * embedded default, here with a data directory and port of its own. It exits
 * 1 with one line saying what to do (no stack), and the embedded Postgres it
 * started goes with it (the app, once built, is closed; a start refused while
 * it is being built signals the server as the process exits), not left
 * running for the next command to mistake for another's.
 */
describe('the API refusing to start', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tracing-refusal-'));
    await chmod(dir, 0o755); // PostgreSQL runs as the `postgres` user when we are root
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  it('on a schema behind the build when it may not migrate: one line naming the command, and no Postgres left running', async () => {
    const port = await freePort();
    const run = await runApiUntilExit({ EMBEDDED_POSTGRES_PORT: String(port), EMBEDDED_DATA_DIR: dir, MIGRATE_ON_START: 'false' });

    expect(run.code).toBe(1);
    expect(run.stderr.trim()).toBe(
      'tracing-api did not start: the Postgres schema is behind this build: pending migrations 0001_initial, 0002_node_page_indexes, 0003_trace_roots_index. ' +
        'Run `npm run migrate` (or set MIGRATE_ON_START=true), then try again.',
    );
    // The server it started (the data directory is there) stops: its pid file goes, nothing answers.
    expect(existsSync(join(dir, 'postgres', 'PG_VERSION'))).toBe(true);
    for (let i = 0; existsSync(join(dir, 'postgres', 'postmaster.pid')); i++) {
      if (i > 200) throw new Error('the embedded Postgres is still running after the refused start');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const client = new Client({ host: '127.0.0.1', port, user: 'postgres', password: 'postgres', database: 'postgres', connectionTimeoutMillis: 2_000 });
    await expect(client.connect()).rejects.toThrow(/ECONNREFUSED/);
  });

  const refusal = (run: { stderr: string }) => run.stderr.trim();

  it('on a Postgres it cannot reach: one line naming the server, without its password', async () => {
    const port = await freePort(); // nothing listens there
    const run = await runApiUntilExit({ DATABASE_URL: `postgres://tracing:s3cret@127.0.0.1:${port}/tracing` });
    expect(run.code).toBe(1);
    expect(refusal(run)).toBe(`tracing-api did not start: could not use Postgres at postgres://tracing:***@127.0.0.1:${port}/tracing: connect ECONNREFUSED 127.0.0.1:${port}`);
  });

  it('on a database not encoded in UTF8: one line saying what to use', async () => {
    await withDatabaseEncoded('LATIN1', async (url) => {
      const run = await runApiUntilExit({ DATABASE_URL: url.toString() });
      expect(run.code).toBe(1);
      url.password = '***';
      expect(refusal(run)).toBe(
        `tracing-api did not start: the Postgres database at ${url.toString()} is encoded LATIN1, which cannot hold every text a span may carry: ` +
          "use a database created with ENCODING 'UTF8'",
      );
    });
  });

  it('on a port another process holds: one line naming it', async () => {
    const held = createServer();
    const port = await new Promise<number>((resolve) => held.listen(0, '127.0.0.1', () => resolve((held.address() as AddressInfo).port)));
    const database = await createTestDatabase();
    try {
      const run = await runApiUntilExit({ DATABASE_URL: database.url, PORT: String(port) });
      expect(run.code).toBe(1);
      expect(refusal(run)).toBe(`tracing-api did not start: 127.0.0.1:${port} is already in use: stop what listens there, or set PORT (or HOST)`);
    } finally {
      held.close();
      await database.drop();
    }
  });

  it('on a port another process holds, with the embedded Postgres: nothing claims a start, and the server is stopped before the process exits', async () => {
    const held = createServer();
    const port = await new Promise<number>((resolve) => held.listen(0, '127.0.0.1', () => resolve((held.address() as AddressInfo).port)));
    const dataDir = await mkdtemp(join(tmpdir(), 'tracing-refusal-port-'));
    await chmod(dataDir, 0o755);
    try {
      const postgresPort = await freePort();
      const run = await runApiUntilExit({ EMBEDDED_POSTGRES_PORT: String(postgresPort), EMBEDDED_DATA_DIR: dataDir, PORT: String(port), LOG_LEVEL: 'info' });

      expect(run.code).toBe(1);
      expect(refusal(run)).toBe(`tracing-api did not start: 127.0.0.1:${port} is already in use: stop what listens there, or set PORT (or HOST)`);
      // The logs of the start up to the failure may stay; a claim that it started, or the failure again as a raw error, may not.
      const logs = run.stdout
        .split('\n')
        .filter((line) => line.trim())
        .map((line) => JSON.parse(line) as { level: number; msg: string });
      expect(logs.some((line) => /embedded PostgreSQL listening/.test(line.msg))).toBe(true);
      expect(logs.filter((line) => /started|listening on http/.test(line.msg) || line.level >= 50)).toEqual([]);
      // The app was closed before the process exited: the server it started has stopped already (not merely been signalled on 'exit').
      expect(existsSync(join(dataDir, 'postgres', 'PG_VERSION'))).toBe(true);
      expect(existsSync(join(dataDir, 'postgres', 'postmaster.pid'))).toBe(false);
      const client = new Client({ host: '127.0.0.1', port: postgresPort, user: 'postgres', password: 'postgres', database: 'postgres', connectionTimeoutMillis: 2_000 });
      await expect(client.connect()).rejects.toThrow(/ECONNREFUSED/);
    } finally {
      held.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

/**
 * An embedded cluster initialised before its initdb was told UTF8, where no
 * locale was set, is SQL_ASCII: its bytes are the API's UTF-8 as sent, so the
 * API uses it, with a warning, and text round-trips.
 */
describe('the API on a SQL_ASCII database', () => {
  it('starts with a warning, and stores and reads back text beyond ASCII', async () => {
    await withDatabaseEncoded('SQL_ASCII', async (url) => {
      const api = await startApiProcess({ DATABASE_URL: url.toString(), LOG_LEVEL: 'warn' });
      try {
        expect(api.logs()).toContain('is encoded SQL_ASCII: it stores text as bytes, unchecked');
        const db = createKysely(createPool(url.toString(), 1));
        const { key } = await new ApiKeyService(new ApiKeysRepository(db)).create('7d1e0e3c-0000-4000-8000-0000000000a5').finally(() => db.destroy());
        const span = { trace_id: '5b8efff798038103d269b633813fc60c', span_id: 'eee19b7ec3c1b174', span_name: 'чат 名前 🚀', start_time: '2026-12-07T10:00:00Z', end_time: '2026-12-07T10:00:01Z', attributes: { 'é': 'ü' } };
        const headers = { Authorization: `ApiKey ${key}`, 'Content-Type': 'application/json' };
        expect((await fetch(`${api.url}/tracing/spans`, { method: 'POST', headers, body: JSON.stringify({ spans: [span] }) })).status).toBe(201);
        const read = (await (await fetch(`${api.url}/tracing/spans/${span.trace_id}/${span.span_id}`, { headers })).json()) as { span: { span_name: string; attributes: unknown } };
        expect(read.span).toMatchObject({ span_name: span.span_name, attributes: span.attributes });
      } finally {
        await api.stop(10_000);
      }
    });
  }, 90_000);
});
