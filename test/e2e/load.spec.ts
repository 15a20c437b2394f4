import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { AddressInfo } from 'node:net';
import { randomBytes, randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { formatSummary, LoadSummary, runLoad } from '../../scripts/load';
import { ApiKeyService } from '../../src/auth/api-key.service';
import { ApiKeysRepository } from '../../src/auth/api-keys.repository';
import { createClickHouseClients } from '../../src/dbs/clickhouse/clickhouse-clients';
import { migrateClickHouse, readTtlDays } from '../../src/dbs/clickhouse/clickhouse-ddl-runner';
import { migrateDown } from '../../src/dbs/postgres/postgres-migrator';
import { processAlive } from '../../src/dbs/process-alive';
import { ensureApiBuild, ROOT, startApiProcess } from '../../scripts/cli/api-process';
import { dropClickHouseDatabase, testClickHouseConfig } from '../support/clickhouse';
import { runCommand } from '../support/commands';
import { eventually, FakeClickHouse } from '../support/fake-clickhouse';
import { freePort } from '../../scripts/cli/free-port';
import { createTestDatabase, TestDatabase } from '../support/postgres';

/**
 * The short version of `npm run load`, through the same code: the compiled
 * API with the mirror on, a steady rate of writes, OTLP exports and reads for
 * a few seconds, then Postgres, ClickHouse and `verify` must agree.
 */

/**
 * Requests in flight at once. The rate holds while the mean latency stays under
 * CONNECTIONS / rate (400 ms): with 8 it was 200 ms, and with another suite's
 * backfill on the same two cores the API answered at p50 104 ms, p99 896 ms and
 * 31 requests/s were made where 40 were asked.
 */
const CONNECTIONS = 16;
const SPANS_PER_REQUEST = 10;
const RATE = 40;
const DURATION_SEC = 15;

describe('load (short run of scripts/load.ts)', () => {
  let database: TestDatabase;
  let clickhouse: ReturnType<typeof testClickHouseConfig>;

  beforeAll(async () => {
    [database] = await Promise.all([createTestDatabase(), ensureApiBuild()]);
    clickhouse = testClickHouseConfig(database.name);
    // The APIs started here would make the mirror tables too; the --url cases that fake the API need them before.
    await migrateClickHouse(clickhouse.config, clickhouse.url);
  }, 180_000);

  afterAll(async () => {
    await database?.drop();
    if (clickhouse) await dropClickHouseDatabase(clickhouse.config, clickhouse.url);
  }, 60_000);

  const storesEnv = () => ({
    DATABASE_URL: database.url,
    CLICKHOUSE_URL: clickhouse.url,
    CLICKHOUSE_USER: clickhouse.config.user,
    CLICKHOUSE_PASSWORD: clickhouse.config.password,
    CLICKHOUSE_DATABASE: database.name,
  });

  /** A stand-in for an API given by --url: mirror on in /health, and every other request answered as a success, storing nothing. */
  async function acceptingApi() {
    const api = createServer((req, res) => {
      req.resume();
      if (req.url === '/health') return res.writeHead(200, { 'Content-Type': 'application/json' }).end('{"status":"ok","details":{"mirror":{"enabled":true}}}');
      res.writeHead(req.method === 'POST' && req.url === '/tracing/spans' ? 201 : 200, { 'Content-Type': 'application/json' }).end('{}');
    });
    await new Promise<void>((listening) => api.listen(0, '127.0.0.1', listening));
    return api;
  }

  it('holds a steady rate with zero errors, and the mirror matches Postgres afterwards', async () => {
    const lines: string[] = [];
    let summary: LoadSummary;
    // A ClickHouse database without tables yet, and a rollout list in the shell, which cannot name the run's new
    // project: the run makes the tables before it counts rows in them, and its API mirrors every project.
    const fresh = { ...clickhouse.config, database: `${database.name}_load` };
    const rollout = randomUUID();
    // In this process's environment too: the API and verify the run starts inherit it, as from an operator's shell.
    process.env.CLICKHOUSE_PROJECT_IDS = rollout;
    try {
      summary = await runLoad({
        durationSec: DURATION_SEC,
        rate: RATE,
        spansPerRequest: SPANS_PER_REQUEST,
        connections: CONNECTIONS,
        env: {
          DATABASE_URL: database.url,
          CLICKHOUSE_URL: clickhouse.url,
          CLICKHOUSE_USER: clickhouse.config.user,
          CLICKHOUSE_PASSWORD: clickhouse.config.password,
          CLICKHOUSE_DATABASE: fresh.database,
          CLICKHOUSE_PROJECT_IDS: rollout,
        },
        log: (line) => lines.push(line),
      });
    } catch (error) {
      throw new Error(`${(error as Error).message}\n${lines.join('\n')}`);
    } finally {
      delete process.env.CLICKHOUSE_PROJECT_IDS;
      await dropClickHouseDatabase(fresh, clickhouse.url);
    }
    process.stdout.write(`${formatSummary(summary)}\n`);

    expect(summary.failures).toEqual([]);
    expect(summary.errors).toBe(0);
    // The run is paced at the asked rate (autocannon stops on time, not on count): not above it (alone, with
    // time to spare, it made 609 of 600) and not a trickle. How close to the rate the API keeps up depends on
    // what else shares the two cores: alone it held all of it, beside backfill-cli.spec in CI 470 of 600, so
    // the floor only catches a run that stopped driving load.
    expect(summary.requests).toBeLessThanOrEqual(RATE * (DURATION_SEC + 1));
    expect(summary.requests).toBeGreaterThan(RATE * DURATION_SEC * 0.4);
    expect(summary.spansAcknowledged).toBeGreaterThan(0);
    // Nothing acknowledged is lost; only requests still in flight when the time ran out may be unacknowledged.
    expect(summary.stores!.postgres.spans).toBeGreaterThanOrEqual(summary.spansAcknowledged);
    expect(summary.stores!.postgres.spans).toBeLessThanOrEqual(summary.spansSent);
    expect(summary.spansSent - summary.spansAcknowledged).toBeLessThanOrEqual(CONNECTIONS * SPANS_PER_REQUEST);
    expect(summary.spansRefused).toBe(0);
    expect(summary.stores!.clickhouse).toEqual(summary.stores!.postgres);
    expect(summary.stores!.gaps).toBe(0);
    expect(summary.verify).toMatchObject({ exitCode: 0 });
    expect(summary.verify!.output).toMatch(/no differences/);
    expect(summary.apiExit).toEqual({ code: 0, signal: null });
  }, 150_000);

  it('against a running API (--url, --key), judges what the run added, not what the project held before', async () => {
    const api = await startApiProcess({ ...storesEnv(), USE_CLICKHOUSE: 'true', MIGRATE_ON_START: 'false' });
    try {
      const { key } = await new ApiKeyService(new ApiKeysRepository(database.db)).create(randomUUID());
      // The project already holds more spans than the run will send, mirrored like any others.
      for (let batch = 0; batch < 3; batch++) {
        const trace = randomBytes(16).toString('hex');
        const spans = Array.from({ length: 1000 }, () => ({
          trace_id: trace,
          span_id: randomBytes(8).toString('hex'),
          span_name: 'held before the run',
          start_time: '2026-11-22T10:00:00.000001Z',
          end_time: '2026-11-22T10:00:01Z',
        }));
        const response = await fetch(`${api.url}/tracing/spans`, {
          method: 'POST',
          headers: { Authorization: `ApiKey ${key}`, 'Content-Type': 'application/json' },
          body: JSON.stringify({ spans }),
        });
        expect(response.status).toBe(201);
      }
      // The tables' TTL is the API's setting (here 30 days); this shell has none, and the run leaves the TTL as it is.
      await migrateClickHouse({ ...clickhouse.config, ttlDays: 30 }, clickhouse.url);
      const summary = await runLoad({ durationSec: 4, rate: 20, spansPerRequest: 10, connections: 4, target: { url: api.url, key }, env: storesEnv(), log: () => undefined });
      const ttl = createClickHouseClients(clickhouse.config, clickhouse.url);
      try {
        expect(Object.fromEntries(await readTtlDays(ttl.query, database.name, ['spans', 'nodes']))).toEqual({ nodes: 30, spans: 30 });
      } finally {
        await ttl.close();
        await migrateClickHouse(clickhouse.config, clickhouse.url);
      }
      expect(summary.failures).toEqual([]);
      expect(summary.stores!.postgresSpansAdded).toBeGreaterThanOrEqual(summary.spansAcknowledged);
      expect(summary.stores!.postgresSpansAdded).toBeLessThanOrEqual(summary.spansSent);
      expect(summary.stores!.postgres.spans).toBe(3000 + summary.stores!.postgresSpansAdded);
      expect(summary.stores!.clickhouse).toEqual(summary.stores!.postgres);
      expect(formatSummary(summary)).toContain('memory     RSS not sampled (API not started by this run)');
    } finally {
      await api.stop();
    }
  }, 120_000);

  it('interrupted before the load started (while the API was built), does not run the whole duration', async () => {
    const api = await startApiProcess({ ...storesEnv(), USE_CLICKHOUSE: 'true', MIGRATE_ON_START: 'false' });
    try {
      const { key } = await new ApiKeyService(new ApiKeysRepository(database.db)).create(randomUUID());
      const interrupt = new AbortController();
      interrupt.abort('SIGTERM');
      const started = Date.now();
      const summary = await runLoad({ durationSec: 60, rate: 20, spansPerRequest: 10, connections: 4, target: { url: api.url, key }, env: storesEnv(), interrupt: interrupt.signal, log: () => undefined });
      expect(Date.now() - started).toBeLessThan(30_000);
      expect(summary.failures).toEqual([expect.stringMatching(/^cut short by SIGTERM after \d+ s of 60 s/)]);
    } finally {
      await api.stop();
    }
  }, 120_000);

  it('against an API whose MAX_BATCH_ITEMS is not this environment\'s (--url): sends the asked batches and names the 413s', async () => {
    // Answers /health as an API with the mirror on and every other request 413, as one with a lower limit would.
    const api = createServer((req, res) => {
      req.resume();
      if (req.url === '/health') return res.writeHead(200, { 'Content-Type': 'application/json' }).end('{"status":"ok","details":{"mirror":{"enabled":true}}}');
      res.writeHead(413, { 'Content-Type': 'application/json' }).end('{"statusCode":413}');
    });
    await new Promise<void>((listening) => api.listen(0, '127.0.0.1', listening));
    try {
      const { key } = await new ApiKeyService(new ApiKeysRepository(database.db)).create(randomUUID());
      const url = `http://127.0.0.1:${(api.address() as AddressInfo).port}`;
      // 1001 is above this environment's MAX_BATCH_ITEMS (1000): not refused, the API given by --url decides.
      const summary = await runLoad({ durationSec: 2, rate: 10, spansPerRequest: 1001, connections: 2, target: { url, key }, env: storesEnv(), log: () => undefined });
      const writes = summary.statusCodes[413] ?? 0;
      expect(writes).toBeGreaterThan(0);
      expect(summary.failures).toContain(`${writes} writes answered 413: the API's MAX_BATCH_ITEMS (or BODY_LIMIT) is below --spans-per-request 1001`);
      expect(summary.spansAcknowledged).toBe(0);
    } finally {
      await new Promise((closed) => api.close(closed));
    }
  }, 120_000);

  it('names a store that stopped answering during the run, and still gives the run\'s figures', async () => {
    // An API that takes every request, as one whose stores went away under it might have until then.
    const api = await acceptingApi();
    const proxy = await FakeClickHouse.start(clickhouse.url);
    try {
      const { key } = await new ApiKeyService(new ApiKeysRepository(database.db)).create(randomUUID());
      const url = `http://127.0.0.1:${(api.address() as AddressInfo).port}`;
      // Refused only once the load is under way: the start pings and counts ClickHouse, which a set time could beat.
      let goesAway: NodeJS.Timeout | undefined;
      const log = (line: string) => {
        if (line.startsWith('load: 10 requests/s for 2 s')) goesAway = setTimeout(() => void proxy.setMode('refuse'), 500);
      };
      const summary = await runLoad({
        durationSec: 2, rate: 10, spansPerRequest: 1, connections: 2, target: { url, key },
        env: { ...storesEnv(), CLICKHOUSE_URL: proxy.url }, log,
      }).finally(() => clearTimeout(goesAway));
      expect(summary.stores).toBeNull();
      expect(summary.failures).toContainEqual(expect.stringMatching(new RegExp(`^the stores could not be counted after the run: ClickHouse at ${proxy.url} did not answer: connect ECONNREFUSED`)));
      expect(summary.requests).toBeGreaterThan(0);
      const printed = formatSummary(summary);
      // In 2 s or a little more: the wall time counts the wait for requests still in flight at the end (here 3 s once, under a full suite).
      expect(printed).toMatch(/^  requests   \d+ in [2-5] s \(/m);
      expect(printed).toMatch(/^  spans      \d+ acknowledged of \d+ sent.*; the stores were not counted \(see FAILED\)$/m);
    } finally {
      await proxy.close();
      await new Promise((closed) => api.close(closed));
    }
  }, 120_000);

  it('on Ctrl-C ends the load early, still counts and prints the summary, names the cut, and exits 130', async () => {
    const api = await acceptingApi();
    try {
      const { key } = await new ApiKeyService(new ApiKeysRepository(database.db)).create(randomUUID());
      const url = `http://127.0.0.1:${(api.address() as AddressInfo).port}`;
      const { NODE_OPTIONS: _jest, ...inherited } = process.env;
      const load = spawn(process.execPath, ['--import', 'tsx', 'scripts/load.ts', '--url', url, '--key', key, '--duration', '120', '--rate', '10'], {
        cwd: ROOT,
        env: { ...inherited, ...storesEnv() },
      });
      let stdout = '';
      let stderr = '';
      load.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
      load.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const exited = new Promise<number | null>((done) => load.on('close', done));
      await eventually('the load to start', () => stderr.includes('load: 10 requests/s for 120 s') || undefined, 30_000, 100);
      await new Promise((done) => setTimeout(done, 2_000));
      load.kill('SIGINT');
      expect(await exited).toBe(130);
      expect(stderr).toContain('load: SIGINT received: ending the load early, then the summary (SIGINT again after a second stops at once)');
      expect(stdout).toMatch(/^  requests   \d+ in \d+ s of 120 \(/m);
      expect(stdout).toMatch(/^  - cut short by SIGINT after \d+ s of 120 s$/m);
    } finally {
      await new Promise((closed) => api.close(closed));
    }
  }, 120_000);

  it('killed with -9, does not leave the API it started running', async () => {
    const { NODE_OPTIONS: _jest, ...inherited } = process.env;
    const load = spawn(process.execPath, ['--import', 'tsx', 'scripts/load.ts', '--duration', '120', '--rate', '5'], { cwd: ROOT, env: { ...inherited, ...storesEnv() } });
    let stderr = '';
    load.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise((done) => load.on('close', done));
    try {
      const apiPid = Number((await eventually('the API to start', () => /^API pid (\d+) /m.exec(stderr)?.[1], 90_000, 100)));
      load.kill('SIGKILL');
      await exited;
      await eventually('the API to stop', () => !processAlive(apiPid) || undefined, 20_000, 200);
    } finally {
      load.kill('SIGKILL');
    }
  }, 150_000);

  it('says why memory was not summarised when it started the API but took too few samples', () => {
    const summary = {
      projectId: randomUUID(), durationSec: 2, ranSec: 2, targetRate: 10, requests: 20, errors: 0, statusCodes: { 201: 20 },
      latencyMs: { p50: 1, p99: 2, max: 3 }, spansAcknowledged: 200, spansSent: 200, spansRefused: 0, memoryChecked: false, rss: null, rssSamples: 1,
      stores: { postgres: { spans: 200, nodes: 200 }, clickhouse: { spans: 200, nodes: 200 }, postgresSpansAdded: 200, gaps: 0 }, verify: null,
      apiExit: { code: 0, signal: null }, failures: [],
    } satisfies LoadSummary;
    expect(formatSummary(summary)).toContain('memory     RSS not summarised: 1 sample after the warm-up, 3 needed (run longer), so not checked');
    expect(formatSummary(summary)).toContain('spans      200 acknowledged of 200 sent; Postgres');
    expect(formatSummary(summary)).toContain('(10/s held, 10/s asked), errors 0');
    // A run far below the rate asked says its figures are not that rate's.
    expect(formatSummary({ ...summary, requests: 12 })).toContain('(6/s held, 10/s asked; below the rate asked, so memory and latency are for the rate held)');
    expect(formatSummary({ ...summary, rssSamples: 0 })).toContain('3 needed (run longer; none are taken where /proc is missing), so not checked');
  });

  it('says why fewer spans were acknowledged than sent: error answers, and requests the end of the run cut off', () => {
    const summary = {
      projectId: randomUUID(), durationSec: 2, ranSec: 2, targetRate: 10, requests: 20, errors: 2, statusCodes: { 201: 17, 503: 1 },
      latencyMs: { p50: 1, p99: 2, max: 3 }, spansAcknowledged: 170, spansSent: 200, spansRefused: 10, memoryChecked: false, rss: null, rssSamples: 0,
      stores: { postgres: { spans: 180, nodes: 180 }, clickhouse: { spans: 180, nodes: 180 }, postgresSpansAdded: 180, gaps: 0 }, verify: null,
      apiExit: null, failures: [],
    } satisfies LoadSummary;
    expect(formatSummary(summary)).toContain(
      'spans      170 acknowledged of 200 sent (10 in error answers; 20 unanswered: in flight when the run ended, or timed out); Postgres',
    );
  });

  describe('refuses before it loads anything', () => {
    const nowhere = { DATABASE_URL: 'postgres://nobody:secret@127.0.0.1:1/none', CLICKHOUSE_URL: 'http://127.0.0.1:1' };

    it('--spans-per-request above MAX_BATCH_ITEMS: exit 2, nothing touched', async () => {
      const run = await runCommand('load', ['--spans-per-request', '1001'], nowhere);
      expect(run.code).toBe(2);
      expect(run.stderr).toContain('error: --spans-per-request must be at most MAX_BATCH_ITEMS (1000), got 1001: the API answers bigger batches 413\n');
      expect(run.stderr).toContain('usage: npm run load -- [options]');
    });

    it('a --url where nothing answers: one line, exit 1, before any server is looked for', async () => {
      const url = `http://127.0.0.1:${await freePort()}`;
      const run = await runCommand('load', ['--url', url, '--key', 'whatever', '--duration', '600'], nowhere);
      expect(run).toMatchObject({ code: 1, stdout: '' });
      expect(run.stderr).toBe(
        `error: the API at ${url} does not answer (GET /health: ECONNREFUSED): start it, or leave out --url and --key to have npm run load start one\n`,
      );
    });

    it('a CLICKHOUSE_URL where nothing answers: one line naming ClickHouse, exit 1, before migrating or starting anything', async () => {
      const unmigrated = await createTestDatabase();
      try {
        await migrateDown(unmigrated.db, true);
        const clickhouseUrl = `http://127.0.0.1:${await freePort()}`;
        const run = await runCommand('load', ['--duration', '600'], { DATABASE_URL: unmigrated.url, CLICKHOUSE_URL: clickhouseUrl });
        expect(run).toMatchObject({ code: 1, stdout: '' });
        expect(run.stderr).toBe(
          `error: ClickHouse at ${clickhouseUrl} does not answer (ECONNREFUSED): npm run load compares what the API mirrored with Postgres, so start it, or leave out CLICKHOUSE_URL to use the local server\n`,
        );
        const tables = await sql<{ n: number }>`select count(*)::int as n from pg_tables where schemaname = 'public' and tablename not like 'kysely_%'`.execute(unmigrated.db);
        expect(tables.rows[0].n).toBe(0);
      } finally {
        await unmigrated.drop();
      }
    });

    it('a --key of a project CLICKHOUSE_PROJECT_IDS leaves out: exit 2, naming it, before ClickHouse is looked for', async () => {
      const project = randomUUID();
      const { key } = await new ApiKeyService(new ApiKeysRepository(database.db)).create(project);
      const api = await acceptingApi();
      try {
        const url = `http://127.0.0.1:${(api.address() as AddressInfo).port}`;
        const run = await runCommand('load', ['--url', url, '--key', key], { DATABASE_URL: database.url, CLICKHOUSE_URL: 'http://127.0.0.1:1', CLICKHOUSE_PROJECT_IDS: randomUUID() });
        expect(run).toMatchObject({ code: 2, stdout: '' });
        expect(run.stderr).toContain(`error: --key's project ${project} is not in CLICKHOUSE_PROJECT_IDS: it is not mirrored`);
      } finally {
        await new Promise((closed) => api.close(closed));
      }
    });

    it('a --key the database does not hold: exit 2, before migrating or starting anything', async () => {
      const unmigrated = await createTestDatabase();
      const health = createServer((_req, res) => res.writeHead(200, { 'Content-Type': 'application/json' }).end('{"status":"ok","details":{}}'));
      await new Promise<void>((listening) => health.listen(0, '127.0.0.1', listening));
      try {
        await migrateDown(unmigrated.db, true);
        const url = `http://127.0.0.1:${(health.address() as AddressInfo).port}`;
        const run = await runCommand('load', ['--url', url, '--key', 'bogus'], { DATABASE_URL: unmigrated.url, CLICKHOUSE_URL: 'http://127.0.0.1:1' });
        expect(run.code).toBe(2);
        expect(run.stderr).toContain('error: --key is not a live API key in this DATABASE_URL\n');
        const tables = await sql<{ n: number }>`select count(*)::int as n from pg_tables where schemaname = 'public' and tablename not like 'kysely_%'`.execute(unmigrated.db);
        expect(tables.rows[0].n).toBe(0);
      } finally {
        await new Promise((closed) => health.close(closed));
        await unmigrated.drop();
      }
    });
  });
});
