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
  let otherKey: string | undefined;

  /** Runs `work` against the API started with the flag as given, then stops it (flushing the mirror when on). */
  async function withApi(
    useClickHouse: boolean,
    work: (api: { url: string; auth: { Authorization: string }; otherAuth: { Authorization: string } }) => Promise<void>,
  ) {
    const app = await createApp({ ...env, USE_CLICKHOUSE: String(useClickHouse), LOG_LEVEL: 'silent' });
    await app.listen(0, '127.0.0.1');
    try {
      apiKey ??= (await app.get(ApiKeyService).create(projectId)).key;
      otherKey ??= (await app.get(ApiKeyService).create(otherProject)).key;
      await work({ url: await app.getUrl(), auth: { Authorization: `ApiKey ${apiKey}` }, otherAuth: { Authorization: `ApiKey ${otherKey}` } });
      if (useClickHouse) await app.get<MirrorRuntime>(MIRROR).writer.drain();
    } finally {
      await app.close();
    }
  }

  const projectId = uuid();
  /** A project whose only change while off is an update: its bucket's row count stays, only its versions differ. */
  const otherProject = uuid();

  it('the README recovery (verify --counts-only --repair) brings ClickHouse level with what the mirror missed', async () => {
    const trace = makeTrace(3);
    const tree = uuid();
    const nodes = [makeNode({ tree_id: tree }), makeNode({ tree_id: tree })];

    const otherTrace = makeTrace(2);

    await withApi(true, async ({ url, auth, otherAuth }) => {
      await request(url).post('/tracing/spans').set(auth).send({ spans: trace }).expect(201);
      await request(url).post('/observability/nodes').set(auth).send({ nodes }).expect(201);
      await request(url).post('/tracing/spans').set(otherAuth).send({ spans: otherTrace }).expect(201);
    });
    // The mirror was on: ClickHouse holds what Postgres holds before anything is written with it off.
    const mirrored = await snapshotBothSides(pg.db, ch.clients.query, projectId);
    expect({ spans: mirrored.chSpans.length, nodes: mirrored.chNodes.length }).toEqual({ spans: 4, nodes: 2 });
    expect(mirrored.chSpans).toEqual(mirrored.pgSpans);

    await withApi(false, async ({ url, auth, otherAuth }) => {
      await request(url).put('/tracing/spans').set(otherAuth).send({ spans: [{ ...otherTrace[1], span_name: 'renamed while off' }] }).expect(200);
      await request(url).put('/tracing/spans').set(auth).send({ spans: [{ ...trace[1], span_name: 'renamed while off' }] }).expect(200);
      await request(url).delete('/tracing/spans').set(auth).send({ spans: [{ trace_id: trace[2].trace_id, span_id: trace[2].span_id }] }).expect(200);
      await request(url).delete(`/observability/trees/${tree}`).set(auth).expect(200);
      await request(url).post('/tracing/spans').set(auth).send({ spans: makeTrace(1) }).expect(201);
    });

    const before = await runCommand('verify', [], env);
    expect(before.code).toBe(1); // the update, the deletes and the new trace are missing from ClickHouse
    // Counts alone still find the other project's update: its rows are as many as before, their versions are not.
    const counted = await runCommand('verify', ['--counts-only', '--project', otherProject], env);
    expect(counted.code).toBe(1);
    expect(counted.stdout).toMatch(new RegExp(`^spans +${otherProject} +\\d{4}-\\d\\d-\\d\\d +${otherTrace.length} +${otherTrace.length} +versions$`, 'm'));

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
    const other = await snapshotBothSides(pg.db, ch.clients.query, otherProject);
    expect(other.chSpans).toEqual(other.pgSpans);
    expect(other.pgSpans.map((span) => span.span_name)).toContain('renamed while off');
  });
});
