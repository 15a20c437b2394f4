import { createClient } from '@clickhouse/client';
import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { ApiKeyService } from '../../src/auth/api-key.service';
import { ApiKeysRepository } from '../../src/auth/api-keys.repository';
import { clickHouseClientOptions } from '../../src/dbs/clickhouse/clickhouse-clients';
import { ApiProcess, ensureApiBuild, startApiProcess } from '../../scripts/cli/api-process';
import { dropClickHouseDatabase, testClickHouseConfig } from '../support/clickhouse';
import { differingBuckets, runCommand } from '../support/commands';
import { eventually } from '../support/fake-clickhouse';
import { makeNode, makeTrace } from '../support/fixtures';
import { createTestDatabase, TestDatabase } from '../support/postgres';
import { closeRawAgent, rawRequest } from '../support/raw-http';

/**
 * The API process is SIGKILLed while mirrored rows sit in the batch writer's
 * buffer: no shutdown flush, no gap record. `npm run verify` must name
 * exactly the buckets that lost rows (and not the ones that are whole), and
 * `--repair` must heal them.
 */

/** A table's buffer is sent at this many rows; below it, rows wait for the (very long) interval. */
const FLUSH_ROWS = 50;

describe('API killed with rows in the mirror buffer', () => {
  let database: TestDatabase;
  let clickhouse: ReturnType<typeof testClickHouseConfig>;
  let api: ApiProcess;
  let env: Record<string, string>;
  const keys: Record<'whole' | 'lostSpans' | 'lostNodes', { projectId: string; key: string }> = {} as never;

  beforeAll(async () => {
    [database] = await Promise.all([createTestDatabase(), ensureApiBuild()]);
    clickhouse = testClickHouseConfig(database.name);
    env = {
      DATABASE_URL: database.url,
      USE_CLICKHOUSE: 'true',
      CLICKHOUSE_URL: clickhouse.url,
      CLICKHOUSE_USER: clickhouse.config.user,
      CLICKHOUSE_PASSWORD: clickhouse.config.password,
      CLICKHOUSE_DATABASE: database.name,
    };
    const apiKeys = new ApiKeyService(new ApiKeysRepository(database.db));
    for (const name of ['whole', 'lostSpans', 'lostNodes'] as const) {
      const projectId = randomUUID();
      keys[name] = { projectId, key: (await apiKeys.create(projectId)).key };
    }
    api = await startApiProcess({
      ...env,
      MIGRATE_ON_START: 'false',
      MIRROR_FLUSH_ROWS: String(FLUSH_ROWS),
      MIRROR_FLUSH_INTERVAL_MS: '600000',
    });
  }, 180_000);

  afterAll(async () => {
    closeRawAgent();
    await api?.stop(5_000);
    await database?.drop();
    if (clickhouse) await dropClickHouseDatabase(clickhouse.config, clickhouse.url);
  }, 60_000);

  const post = async (who: keyof typeof keys, path: string, body: unknown) => {
    const res = await rawRequest(api.url, 'POST', path, JSON.stringify(body), { Authorization: `ApiKey ${keys[who].key}`, 'Content-Type': 'application/json' });
    expect(res.status).toBe(201);
  };

  it('verify finds exactly the buckets the kill lost, and --repair heals them', async () => {
    const ch = createClient(clickHouseClientOptions(clickhouse.config, clickhouse.url));
    const chCount = async (table: string, projectId: string) =>
      Number((await (await ch.query({ query: `SELECT count() AS n FROM ${table} FINAL WHERE project_id = {p:UUID}`, query_params: { p: projectId }, format: 'JSONEachRow' })).json<{ n: string }>())[0].n);
    try {
      // Whole: exactly two flushes' worth of spans and one of nodes, so the buffers are empty afterwards.
      for (let i = 0; i < (2 * FLUSH_ROWS) / 10; i++) await post('whole', '/tracing/spans', { spans: makeTrace(9) });
      await post('whole', '/observability/nodes', { nodes: Array.from({ length: FLUSH_ROWS }, () => makeNode()) });
      await eventually('the whole project to be in ClickHouse', async () =>
        (await chCount('spans', keys.whole.projectId)) === 2 * FLUSH_ROWS && (await chCount('nodes', keys.whole.projectId)) === FLUSH_ROWS, 20_000, 100);

      // Lost: fewer rows than a flush, in two other projects; they stay in the buffer.
      for (let i = 0; i < 3; i++) await post('lostSpans', '/tracing/spans', { spans: makeTrace(9) });
      await post('lostNodes', '/observability/nodes', { nodes: Array.from({ length: 20 }, () => makeNode()) });
      api.child.kill('SIGKILL');
      expect(await api.exited).toEqual({ code: null, signal: 'SIGKILL' });

      expect(await chCount('spans', keys.lostSpans.projectId)).toBe(0);
      expect(await chCount('nodes', keys.lostNodes.projectId)).toBe(0);
      // A killed process records no gap: only verify can find what it lost.
      expect(await database.db.selectFrom('mirror_gaps').selectAll().execute()).toEqual([]);

      const days = async (table: 'spans' | 'nodes', projectId: string) =>
        (await sql<{ day: string }>`select distinct to_char(created_at at time zone 'UTC', 'YYYY-MM-DD') as day from ${sql.table(table)} where project_id = ${projectId}`.execute(database.db)).rows.map((r) => r.day);
      const expected = [
        ...(await days('spans', keys.lostSpans.projectId)).map((day) => ({ entity: 'spans', projectId: keys.lostSpans.projectId, day, clickhouseRows: 0 })),
        ...(await days('nodes', keys.lostNodes.projectId)).map((day) => ({ entity: 'nodes', projectId: keys.lostNodes.projectId, day, clickhouseRows: 0 })),
      ];

      const found = await runCommand('verify', [], env);
      expect(found.code).toBe(1);
      const buckets = differingBuckets(found.stdout);
      const byKey = (b: { entity: string; projectId: string; day: string }) => `${b.entity}/${b.projectId}/${b.day}`;
      expect(buckets.map(byKey).sort()).toEqual(expected.map(byKey).sort());
      expect(buckets.reduce((n, b) => n + b.postgresRows, 0)).toBe(30 + 20);
      expect(buckets.every((b) => b.clickhouseRows === 0)).toBe(true);

      const repaired = await runCommand('verify', ['--repair'], env);
      expect({ code: repaired.code, out: repaired.stdout + repaired.stderr.slice(-1_000) }).toMatchObject({ code: 0 });
      expect(repaired.stdout).toMatch(new RegExp(`repair: ${expected.length} buckets? re-copied`));
      expect(await chCount('spans', keys.lostSpans.projectId)).toBe(30);
      expect(await chCount('nodes', keys.lostNodes.projectId)).toBe(20);

      const after = await runCommand('verify', [], env);
      expect(after.code).toBe(0);
      expect(after.stdout).toMatch(/no differences/);
      process.stdout.write(`sigkill: verify named ${buckets.length} bucket(s) (${buckets.map(byKey).join(', ')}), repair healed them; ${after.stdout.trim().split('\n').pop()}\n`);
    } finally {
      await ch.close();
    }
  }, 120_000);
});
