import request from 'supertest';
import { ApiKeyService } from '../../src/auth/api-key.service';
import { createApp } from '../../src/bootstrap';
import { MIRROR, MirrorRuntime } from '../../src/dbs/dual-write/mirror.module';
import { createTestClickHouse, TestClickHouse } from '../support/clickhouse';
import { runCommand, storesEnv } from '../support/commands';
import { makeNode, makeTrace, uuid } from '../support/fixtures';
import { snapshotBothSides } from '../support/mirror';
import { createTestDatabase, TestDatabase } from '../support/postgres';

/**
 * The flag turned off and on again, as README "Turning it off" tells it: one
 * database, an API with the mirror on, then one with it off that updates and
 * deletes rows written before (which no time range of creation finds), then
 * the README's recovery. ClickHouse must end up holding what Postgres holds.
 */
describe('writes made while USE_CLICKHOUSE was off, then the recovery', () => {
  let pg: TestDatabase;
  let ch: TestClickHouse;
  let env: Record<string, string>;
  beforeAll(async () => {
    [pg, ch] = await Promise.all([createTestDatabase(), createTestClickHouse()]);
    env = { ...storesEnv(pg, ch), MIGRATE_ON_START: 'false' };
  });
  afterAll(async () => Promise.all([pg?.drop(), ch?.drop()]));

  let apiKey: string | undefined;

  /** Runs `work` against the API started with the flag as given, then stops it (flushing the mirror when on). */
  async function withApi(useClickHouse: boolean, work: (api: { url: string; auth: { Authorization: string } }) => Promise<void>) {
    const app = await createApp({ ...env, USE_CLICKHOUSE: String(useClickHouse), LOG_LEVEL: 'silent' });
    await app.listen(0, '127.0.0.1');
    try {
      apiKey ??= (await app.get(ApiKeyService).create(projectId)).key;
      await work({ url: await app.getUrl(), auth: { Authorization: `ApiKey ${apiKey}` } });
      if (useClickHouse) await app.get<MirrorRuntime>(MIRROR).writer.drain();
    } finally {
      await app.close();
    }
  }

  const projectId = uuid();

  it('the README recovery (verify --counts-only --repair) brings ClickHouse level with what the mirror missed', async () => {
    const trace = makeTrace(3);
    const tree = uuid();
    const nodes = [makeNode({ tree_id: tree }), makeNode({ tree_id: tree })];

    await withApi(true, async ({ url, auth }) => {
      await request(url).post('/tracing/spans').set(auth).send({ spans: trace }).expect(201);
      await request(url).post('/observability/nodes').set(auth).send({ nodes }).expect(201);
    });
    await withApi(false, async ({ url, auth }) => {
      await request(url).put('/tracing/spans').set(auth).send({ spans: [{ ...trace[1], span_name: 'renamed while off' }] }).expect(200);
      await request(url).delete('/tracing/spans').set(auth).send({ spans: [{ trace_id: trace[2].trace_id, span_id: trace[2].span_id }] }).expect(200);
      await request(url).delete(`/observability/trees/${tree}`).set(auth).expect(200);
      await request(url).post('/tracing/spans').set(auth).send({ spans: makeTrace(1) }).expect(201);
    });

    const before = await runCommand('verify', [], env);
    expect(before.code).toBe(1); // the update, the deletes and the new trace are missing from ClickHouse

    const recovery = await runCommand('verify', ['--counts-only', '--repair'], env);
    expect(recovery.code).toBe(0);

    const after = await runCommand('verify', [], env);
    expect(after.code).toBe(0);
    const both = await snapshotBothSides(pg.db, ch.clients.query, projectId);
    expect(both.chSpans).toEqual(both.pgSpans);
    expect(both.chNodes).toEqual(both.pgNodes);
    expect(both.pgSpans.find((s) => s.span_id === trace[1].span_id)?.span_name).toBe('renamed while off');
    expect(both.pgSpans).toHaveLength(5); // 4 of the first trace minus the deleted one, plus the new trace's 2
    expect(both.pgNodes).toHaveLength(0);
  });
});
