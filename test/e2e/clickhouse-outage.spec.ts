import { createTestApp, TestApp } from '../support/app';
import { runCommand } from '../support/commands';
import { eventually, FakeClickHouse } from '../support/fake-clickhouse';
import { makeNode, makeTrace } from '../support/fixtures';
import { testClickHouseConfig } from '../support/clickhouse';
import { closeRawAgent, rawRequest } from '../support/raw-http';

/**
 * ClickHouse stops under load and comes back. The API must not notice (every
 * request succeeds); afterwards the writer's gap records, replayed with
 * `npm run backfill -- --gaps`, and the live mirror together leave nothing
 * for `npm run verify` to find.
 */

const CLIENTS = 6;

describe('ClickHouse stopped under load, then restarted', () => {
  let t: TestApp;
  let proxy: FakeClickHouse;
  let env: Record<string, string>;

  beforeAll(async () => {
    proxy = await FakeClickHouse.start(testClickHouseConfig('default').url);
    t = await createTestApp(
      {
        CLICKHOUSE_URL: proxy.url,
        MIRROR_FLUSH_INTERVAL_MS: '200',
        // Give up on a batch quickly, and never open the breaker (an open breaker holds a batch until
        // ClickHouse is back: no gap), so the outage surely turns rows into gap records to replay.
        MIRROR_MAX_ATTEMPTS: '3',
        MIRROR_BREAKER_FAILURES: '100000',
        MIRROR_BASE_BACKOFF_MS: '100',
        MIRROR_MAX_BACKOFF_MS: '500',
        MIRROR_BREAKER_OPEN_MS: '500',
        CLICKHOUSE_REQUEST_TIMEOUT_MS: '2000',
      },
      { clickhouse: true },
    );
    const direct = testClickHouseConfig(t.database.name);
    // The commands talk to the real server, not through the proxy.
    env = {
      DATABASE_URL: t.database.url,
      USE_CLICKHOUSE: 'true',
      CLICKHOUSE_URL: direct.url,
      CLICKHOUSE_USER: direct.config.user,
      CLICKHOUSE_PASSWORD: direct.config.password,
      CLICKHOUSE_DATABASE: t.database.name,
    };
  }, 60_000);

  afterAll(async () => {
    closeRawAgent();
    await t?.close();
    await proxy?.close();
  }, 60_000);

  it('answers every request during the outage, and verify finds no difference after gap replay', async () => {
    const statuses = new Map<number | string, number>();
    let phase: 'before' | 'outage' | 'after' | 'done' = 'before';
    const perPhase = { before: 0, outage: 0, after: 0 };
    const headers = { Authorization: `ApiKey ${t.apiKey}`, 'Content-Type': 'application/json' };

    const client = async (n: number) => {
      for (let i = 0; phase !== 'done'; i++) {
        const current = phase;
        const write =
          i % 5 === 4
            ? rawRequest(t.url, 'POST', '/observability/nodes', JSON.stringify({ nodes: [makeNode(), makeNode()] }), headers)
            : rawRequest(t.url, 'POST', '/tracing/spans', JSON.stringify({ spans: makeTrace(4, { span_name: `client-${n}` }) }), headers);
        const status = await write.then((r) => r.status, (e: Error) => e.message);
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
        perPhase[current] += 1;
      }
    };

    const clients = Array.from({ length: CLIENTS }, (_, n) => client(n));
    const wait = (ms: number) => new Promise((done) => setTimeout(done, ms));
    await wait(2_000);
    phase = 'outage';
    await proxy.setMode('refuse');
    await wait(4_000);
    await proxy.setMode('forward');
    phase = 'after';
    await wait(3_000);
    phase = 'done';
    await Promise.all(clients);

    // The API never noticed.
    expect(Object.fromEntries(statuses)).toEqual({ 201: expect.any(Number) });
    expect(perPhase.outage).toBeGreaterThan(CLIENTS);

    // The writer recovers by itself: everything queued is sent or recorded as a gap.
    const writer = t.mirror!.writer;
    await eventually(
      'the mirror to drain after ClickHouse is back',
      () => {
        // Not drained yet: the writer's stats become the failure's "last", to say where it stuck.
        const stats = writer.stats();
        if (stats.queuedRows !== 0 || stats.inFlightBatches !== 0) throw new Error(JSON.stringify(stats));
        return true;
      },
      30_000,
      100,
    );
    const gapsRecorded = writer.stats().gapsRecorded;
    expect(gapsRecorded).toBeGreaterThan(0);

    const replay = await runCommand('backfill', ['--gaps'], env);
    expect({ code: replay.code, stderr: replay.stderr.slice(-2_000) }).toMatchObject({ code: 0 });
    expect(replay.stdout).toMatch(new RegExp(`^gaps: replayed ${gapsRecorded} gap records?: [1-9]\\d* rows? upserted`, 'm'));
    const open = await t.database.db.selectFrom('mirror_gaps').select('id').where('replayed_at', 'is', null).execute();
    expect(open).toEqual([]);

    const verify = await runCommand('verify', [], env);
    expect({ code: verify.code, out: verify.stdout + verify.stderr.slice(-1_000) }).toMatchObject({ code: 0 });
    expect(verify.stdout).toMatch(/ 0 differ.*no differences/);
    process.stdout.write(
      `clickhouse outage: ${[...statuses.values()].reduce((a, b) => a + b, 0)} requests (${perPhase.outage} during the outage), all 201; ` +
        `${writer.stats().rowsSent} rows sent live, ${gapsRecorded} gap record(s) replayed; ${verify.stdout.trim().split('\n').pop()}\n`,
    );
  }, 120_000);
});
