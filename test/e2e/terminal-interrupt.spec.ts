import { randomUUID } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient } from '@clickhouse/client';
import { Client } from 'pg';
import { ApiKeyService } from '../../src/auth/api-key.service';
import { ApiKeysRepository } from '../../src/auth/api-keys.repository';
import { clickHouseAnswers } from '../../src/dbs/clickhouse/local-clickhouse';
import { localPostgresUrl } from '../../src/dbs/postgres/local-postgres';
import { createKysely, createPool } from '../../src/dbs/postgres/postgres-pool';
import { childRunning } from '../../src/dbs/process-alive';
import { ApiProcess, startApiProcess } from '../../scripts/cli/api-process';
import { makeTrace } from '../support/fixtures';
import { freePort } from '../../scripts/cli/free-port';

/**
 * Ctrl-C in the terminal that runs `npm start`: the terminal sends SIGINT to
 * its whole foreground process group, and npm forwards one more to the API.
 * The embedded Postgres and local ClickHouse the API started were in that
 * group and stopped at once: the drain's requests got 503s, the mirror's
 * last flush failed and its gap could not be recorded, so rows were lost
 * from ClickHouse. The second SIGINT hit the default handler and exited
 * mid-drain. Here the API runs as a terminal's job would (its own group,
 * every process of it signalled), with rows waiting in the mirror's buffer.
 */
describe('Ctrl-C in a terminal (SIGINT to the process group, then npm forwarding one more)', () => {
  it('drains, flushes the mirror into the servers it started, stops them, exits 0, and loses nothing', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'terminal-interrupt-'));
    // As root, PostgreSQL runs as the `postgres` user, which must reach its data directory below this one.
    chmodSync(dataDir, 0o755);
    const [postgresPort, clickhousePort] = [await freePort(), await freePort()];

    /** The compiled API with its own embedded Postgres and local ClickHouse, as `npm start` runs it from a terminal. */
    const launch = (env: Record<string, string> = {}) =>
      startApiProcess(
        {
          LOG_LEVEL: 'info',
          // Empty is unset: the embedded servers, whatever the test run's environment says.
          DATABASE_URL: '',
          CLICKHOUSE_URL: '',
          USE_CLICKHOUSE: 'true',
          EMBEDDED_DATA_DIR: dataDir,
          EMBEDDED_POSTGRES_PORT: String(postgresPort),
          EMBEDDED_CLICKHOUSE_PORT: String(clickhousePort),
          ...env,
        },
        { detached: true, readyTimeoutMs: 90_000 },
      );
    const killGroup = async (api: ApiProcess) => {
      if (childRunning(api.child)) process.kill(-api.child.pid!, 'SIGKILL');
      await api.exited;
    };

    const projectId = randomUUID();
    const spans = makeTrace(4);
    try {
      // The rows are still in the buffer when the signal comes: only the shutdown flush sends them.
      const api = await launch({ MIRROR_FLUSH_INTERVAL_MS: '60000' });
      try {
        const pool = createPool(localPostgresUrl(postgresPort, 'tracing'), 1);
        const db = createKysely(pool);
        const { key } = await new ApiKeyService(new ApiKeysRepository(db)).create(projectId);
        await db.destroy();
        const written = await fetch(`${api.url}/tracing/spans`, {
          method: 'POST',
          headers: { Authorization: `ApiKey ${key}`, 'Content-Type': 'application/json' },
          body: JSON.stringify({ spans }),
        });
        expect(written.status).toBe(201);

        process.kill(-api.child.pid!, 'SIGINT');
        await new Promise((done) => setTimeout(done, 50));
        api.child.kill('SIGINT');
        expect(await api.exited).toEqual({ code: 0, signal: null });
        const logs = api.logs();
        expect(logs).toContain('SIGINT received again (one Ctrl-C under npm arrives twice: from the terminal and forwarded by npm): already shutting down');
        expect(logs).toContain('shut down cleanly');
        expect(logs).not.toMatch(/could not be recorded|ECONNREFUSED/);
        // It stopped what it started (its own sessions ended first: none of another process kept Postgres running).
        expect(logs).not.toContain('left running');
        expect(await clickHouseAnswers(`http://127.0.0.1:${clickhousePort}`)).toBe(false);
        const probe = new Client({ connectionString: localPostgresUrl(postgresPort, 'postgres'), connectionTimeoutMillis: 2_000 });
        expect(await probe.connect().then(() => true, () => false)).toBe(false);
        await probe.end().catch(() => undefined);
      } finally {
        await killGroup(api);
      }

      // Both stores, started again on the same data by the API: every span in Postgres and in ClickHouse.
      const again = await launch();
      const pool = createPool(localPostgresUrl(postgresPort, 'tracing'), 1);
      const query = createClient({ url: `http://127.0.0.1:${clickhousePort}`, database: 'tracing' });
      try {
        const inPostgres = await pool.query('select count(*)::int as n from spans where project_id = $1', [projectId]);
        const inClickHouse = await query.query({
          query: 'SELECT count() AS n FROM spans FINAL WHERE project_id = {p:UUID} AND is_deleted = 0',
          query_params: { p: projectId },
          format: 'JSONEachRow',
        });
        expect({ postgres: inPostgres.rows[0].n, clickhouse: Number((await inClickHouse.json<{ n: string }>())[0].n) }).toEqual({
          postgres: spans.length,
          clickhouse: spans.length,
        });
      } finally {
        await query.close();
        await pool.end();
        await again.stop();
        await killGroup(again);
      }
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 240_000);
});
