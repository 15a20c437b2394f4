import { ClickHouseLogLevel, createClient } from '@clickhouse/client';
import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Kysely, sql } from 'kysely';
import { ApiKeyService } from '../src/auth/api-key.service';
import { ApiKeysRepository } from '../src/auth/api-keys.repository';
import { AppConfig, parseConfig } from '../src/config/app-config';
import { redactUrl } from '../src/config/redact-url';
import { counted } from '../src/counted';
import { errorText } from '../src/error-text';
import { clickHouseClientOptions } from '../src/dbs/clickhouse/clickhouse-clients';
import { migrateClickHouse } from '../src/dbs/clickhouse/clickhouse-ddl-runner';
import { resolveClickHouse } from '../src/dbs/clickhouse/local-clickhouse';
import { describeSendError } from '../src/dbs/clickhouse/retry-policy';
import { DB } from '../src/dbs/postgres/database';
import { resolvePostgres } from '../src/dbs/postgres/local-postgres';
import { prepareSchema } from '../src/dbs/postgres/postgres-migrator';
import { createKysely, createPool } from '../src/dbs/postgres/postgres-pool';
import { ApiProcess, ensureApiBuild, ROOT, startApiProcess } from './cli/api-process';
import { parseFlags, positiveInt } from './cli/flags';
import { isNpmRepeat, runCli, SIGNAL_EXIT_CODES, UsageError } from './cli/run-cli';

/**
 * A bounded load run on loopback with the mirror on: a steady rate of span
 * writes (plus some OTLP exports and reads) for a fixed time, the API's RSS
 * sampled throughout, then Postgres and ClickHouse compared once the mirror
 * has drained. Exits non-zero on any failed request, memory growth past the
 * bound, or any difference between the two stores.
 */

const USAGE = `usage: npm run load -- [options]

  --duration <s>            seconds of load (default 180)
  --rate <n>                requests per second, all kinds together (default 200)
  --spans-per-request <n>   spans in each POST /tracing/spans (default 10)
  --connections <n>         concurrent connections (default 16)
  --url <url> --key <key>   load an API that is already running (default: start one, mirror on)

Without --url, the API is started from a compiled build against DATABASE_URL
and CLICKHOUSE_URL, or the embedded servers, with USE_CLICKHOUSE=true.`;

export interface LoadOptions {
  durationSec: number;
  /** Requests per second over all kinds of request. */
  rate: number;
  spansPerRequest: number;
  connections: number;
  /** An API that is already running, and a key of the project to load; otherwise one is started. */
  target?: { url: string; key: string };
  /** Environment for the servers (DATABASE_URL, CLICKHOUSE_*); defaults to process.env. */
  env?: Record<string, string | undefined>;
  /** How often to sample the API's RSS. */
  sampleEveryMs?: number;
  /** Fail on memory growth; by default only runs of a minute or more, shorter ones are mostly warm-up. */
  checkMemory?: boolean;
  /** Cuts the load short (the command's Ctrl-C): the run then ends as if its time were up, and the summary fails it. */
  interrupt?: AbortSignal;
  log?: (line: string) => void;
}

export interface RssSample {
  atMs: number;
  rssBytes: number;
}

export interface LoadSummary {
  projectId: string;
  durationSec: number;
  /** Seconds the load ran: durationSec, unless it was cut short. */
  ranSec: number;
  /** The rate asked for; `requests / ranSec` is the rate held. */
  targetRate: number;
  requests: number;
  /** Non-2xx answers plus socket errors and timeouts. */
  errors: number;
  statusCodes: Record<string, number>;
  latencyMs: { p50: number; p99: number; max: number };
  spansAcknowledged: number;
  /** Spans in every request sent; requests still in flight when the run's time is up are sent but not acknowledged. */
  spansSent: number;
  /** Spans of requests answered with an error status; sent minus acknowledged minus these were never answered. */
  spansRefused: number;
  /** Whether memory growth was a failure condition for this run (see LoadOptions.checkMemory), with RSS figures to judge. */
  memoryChecked: boolean;
  rss: { samples: number; minMb: number; maxMb: number; slopeMbPerMin: number; firstThirdMb: number; lastThirdMb: number } | null;
  /** RSS samples taken after the warm-up (rss needs 3); 0 when the run did not start the API. */
  rssSamples: number;
  /** The stores after the run; null when one did not answer the counts (`failures` says which, and why). */
  stores: StoresAfterRun | null;
  verify: { exitCode: number | null; output: string } | null;
  apiExit: { code: number | null; signal: string | null } | null;
  failures: string[];
}

export interface StoresAfterRun {
  /** The project's counts (a --key project may hold rows from before the run). */
  postgres: { spans: number; nodes: number };
  clickhouse: { spans: number; nodes: number };
  /** Spans Postgres gained during the run: what the acknowledged and sent counts are held to. */
  postgresSpansAdded: number;
  gaps: number;
}

/** Memory may grow by this much from the first third of the run to the last before it counts as a leak. */
export const RSS_GROWTH_FACTOR = 1.3;
export const RSS_GROWTH_SLACK_BYTES = 20 * 1024 * 1024;

interface Autocannon {
  (options: Record<string, unknown>): Promise<AutocannonResult> & { stop(): void; on(event: string, fn: (...args: unknown[]) => void): void };
}
interface AutocannonResult {
  requests: { total: number };
  latency: { p50: number; p99: number; max: number };
  errors: number;
  timeouts: number;
  non2xx: number;
  statusCodeStats: Record<string, { count: number }>;
}
// autocannon ships no types; this is the slice used here.
const autocannon: Autocannon = require('autocannon');

const hex = (bytes: number) => randomBytes(bytes).toString('hex');

function spansBody(count: number): { body: string; traceId: string } {
  const traceId = hex(16);
  const root = hex(8);
  const now = Date.now();
  const iso = (ms: number) => new Date(ms).toISOString().replace('Z', '123Z');
  const spans = Array.from({ length: count }, (_, i) => ({
    trace_id: traceId,
    span_id: i === 0 ? root : hex(8),
    parent_id: i === 0 ? null : root,
    span_type: i === 0 ? 'workflow' : 'llm',
    span_kind: 'SPAN_KIND_CLIENT',
    span_name: i === 0 ? 'load root' : `load child ${i}`,
    start_time: iso(now - 1_000 + i),
    end_time: iso(now + i),
    status_code: i % 17 === 0 ? 'STATUS_CODE_ERROR' : 'STATUS_CODE_OK',
    attributes: { ag: { metrics: { tokens: { cumulative: { total: 100 + i } }, costs: { cumulative: { total: 0.001 * i } } } }, gen_ai: { request: { model: 'gpt-4o' } }, load: true },
    events: [{ name: 'token', timestamp: iso(now - 500), attributes: { n: i } }],
  }));
  return { body: JSON.stringify({ spans }), traceId };
}

function otlpBody(count: number): string {
  const traceId = hex(16);
  const start = BigInt(Date.now()) * 1_000_000n;
  const spans = Array.from({ length: count }, (_, i) => ({
    traceId,
    spanId: hex(8),
    name: `otlp ${i}`,
    kind: 3,
    startTimeUnixNano: String(start + BigInt(i)),
    endTimeUnixNano: String(start + 1_000_000n + BigInt(i)),
    attributes: [{ key: 'gen_ai.usage.input_tokens', value: { intValue: String(10 + i) } }],
    status: { code: 1 },
  }));
  return JSON.stringify({ resourceSpans: [{ resource: { attributes: [{ key: 'service.name', value: { stringValue: 'load' } }] }, scopeSpans: [{ scope: { name: 'load' }, spans }] }] });
}

async function rssOf(pid: number): Promise<number | null> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const kb = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    return kb ? Number(kb[1]) * 1024 : null;
  } catch {
    return null;
  }
}

const mb = (bytes: number) => Math.round((bytes / 1024 / 1024) * 10) / 10;
const average = (values: number[]) => values.reduce((a, b) => a + b, 0) / Math.max(values.length, 1);

function rssSummary(samples: RssSample[]): LoadSummary['rss'] {
  if (samples.length < 3) return null;
  const xs = samples.map((s) => s.atMs / 60_000);
  const ys = samples.map((s) => s.rssBytes / 1024 / 1024);
  const mx = average(xs);
  const my = average(ys);
  const slope = xs.reduce((acc, x, i) => acc + (x - mx) * (ys[i] - my), 0) / Math.max(xs.reduce((acc, x) => acc + (x - mx) ** 2, 0), 1e-9);
  const third = Math.max(1, Math.floor(samples.length / 3));
  return {
    samples: samples.length,
    minMb: mb(Math.min(...samples.map((s) => s.rssBytes))),
    maxMb: mb(Math.max(...samples.map((s) => s.rssBytes))),
    slopeMbPerMin: Math.round(slope * 10) / 10,
    firstThirdMb: mb(average(samples.slice(0, third).map((s) => s.rssBytes))),
    lastThirdMb: mb(average(samples.slice(-third).map((s) => s.rssBytes))),
  };
}

interface Stores {
  db: Kysely<DB>;
  clickhouse: { url: string; config: AppConfig['clickhouse'] };
  env: Record<string, string>;
  close(): Promise<void>;
}

/**
 * Postgres and ClickHouse as every command resolves them (env URLs, else the
 * embedded servers). `check` runs once Postgres answers, before anything is
 * migrated or ClickHouse is started, so a refusal changes nothing.
 */
async function openStores(
  source: Record<string, string | undefined>,
  log: (line: string) => void,
  check: (db: Kysely<DB>) => Promise<void> = async () => undefined,
): Promise<Stores> {
  const config = parseConfig({ ...source, USE_CLICKHOUSE: 'true' });
  const postgres = await resolvePostgres(config.postgres, log);
  // No statement timeout, as the operator commands have none (postgres-cli.ts): it migrates, counts and verifies.
  const db = createKysely(createPool(postgres.url, 2, { statementTimeoutMs: 0 }));
  let clickhouse: Awaited<ReturnType<typeof resolveClickHouse>> | undefined;
  try {
    await check(db);
    clickhouse = await resolveClickHouse(config.clickhouse, log);
    await checkClickHouseAnswers(clickhouse.url, config.clickhouse);
    await prepareSchema(db, config.postgres.migrateOnStart, { where: redactUrl(postgres.url), warn: (line) => log(`warning: ${line}`) });
    // The API creates the tables too, but in the background: the run counts rows in them as soon as it answers.
    // As the API does: the TTL of tables that exist is the API's setting, not this shell's.
    await migrateClickHouse(config.clickhouse, clickhouse.url, { log, ttl: 'new-tables' });
  } catch (error) {
    await db.destroy();
    await clickhouse?.stop?.();
    await postgres.stop?.();
    throw error;
  }
  const env: Record<string, string> = {
    DATABASE_URL: postgres.url,
    USE_CLICKHOUSE: 'true',
    CLICKHOUSE_URL: clickhouse.url,
    CLICKHOUSE_USER: config.clickhouse.user,
    CLICKHOUSE_PASSWORD: config.clickhouse.password,
    CLICKHOUSE_DATABASE: config.clickhouse.database,
  };
  return {
    db,
    clickhouse: { url: clickhouse.url, config: config.clickhouse },
    env,
    close: async () => {
      await db.destroy();
      await clickhouse.stop?.();
      await postgres.stop?.();
    },
  };
}

/**
 * The run ends by comparing Postgres with ClickHouse: a CLICKHOUSE_URL where
 * nothing answers ends it here, in one line naming ClickHouse, before anything
 * is migrated or loaded (not as a bare ECONNREFUSED from the first count).
 */
async function checkClickHouseAnswers(url: string, config: AppConfig['clickhouse']): Promise<void> {
  const client = createClient({ ...clickHouseClientOptions(config, url), log: { level: ClickHouseLogLevel.OFF } });
  try {
    const ping = await client.ping();
    if (!ping.success) {
      const error = ping.error as Error & { code?: string };
      throw new Error(
        `ClickHouse at ${redactUrl(url)} does not answer (${error.code ?? error.message}): npm run load compares what the API mirrored with Postgres, so start it, or leave out CLICKHOUSE_URL to use the local server`,
      );
    }
  } finally {
    await client.close();
  }
}

/** The project's rows in both stores and its open gaps; a store that does not answer is named in the error. */
async function countBoth(stores: Stores, projectId: string) {
  const named = (store: string, describe: (error: unknown) => string) => (error: unknown) => {
    throw new Error(`${store} did not answer: ${describe(error)}`);
  };
  const inPostgres = async (query: ReturnType<typeof sql<{ n: string }>>) =>
    Number((await query.execute(stores.db).catch(named(`Postgres at ${redactUrl(stores.env.DATABASE_URL)}`, errorText))).rows[0].n);
  const ch = createClient({ ...clickHouseClientOptions(stores.clickhouse.config, stores.clickhouse.url), log: { level: ClickHouseLogLevel.OFF } });
  try {
    const inClickHouse = async (table: 'spans' | 'nodes') => {
      const result = await ch
        .query({
          query: `SELECT count() AS n FROM ${table} FINAL WHERE project_id = {project:UUID} AND is_deleted = 0`,
          query_params: { project: projectId },
          format: 'JSONEachRow',
        })
        .catch(named(`ClickHouse at ${redactUrl(stores.clickhouse.url)}`, describeSendError));
      return Number((await result.json<{ n: string }>())[0]?.n ?? 0);
    };
    const rows = (table: 'spans' | 'nodes') => sql<{ n: string }>`select count(*)::text as n from ${sql.table(table)} where project_id = ${projectId}`;
    const [pgSpans, pgNodes, chSpans, chNodes] = await Promise.all([inPostgres(rows('spans')), inPostgres(rows('nodes')), inClickHouse('spans'), inClickHouse('nodes')]);
    const gaps = await inPostgres(sql<{ n: string }>`select count(*)::text as n from mirror_gaps where project_id = ${projectId} and replayed_at is null`);
    return { postgres: { spans: pgSpans, nodes: pgNodes }, clickhouse: { spans: chSpans, nodes: chNodes }, gaps };
  } finally {
    await ch.close();
  }
}

/** `npm run verify` for one project, as an operator runs it; its exit code is the verdict. */
function runVerify(env: Record<string, string>, projectId: string): Promise<{ exitCode: number | null; output: string }> {
  const { NODE_OPTIONS: _jest, ...inherited } = process.env;
  return new Promise((done) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join('scripts', 'verify.ts'), '--project', projectId], {
      cwd: ROOT,
      env: { ...inherited, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.on('close', (code) => done({ exitCode: code, output: output.trim() }));
  });
}

/** GET /health of an API that should be running: its answer, or an error saying in one line that nothing answers there. */
async function healthOf(url: string): Promise<{ details?: { mirror?: { enabled?: boolean } } } | null> {
  let response: Response;
  try {
    response = await fetch(`${url}/health`, { signal: AbortSignal.timeout(10_000) });
  } catch (error) {
    const cause = (error as { cause?: { code?: string; message?: string } }).cause;
    throw new Error(`the API at ${url} does not answer (GET /health: ${cause?.code ?? cause?.message ?? (error as Error).message}): start it, or leave out --url and --key to have npm run load start one`);
  }
  // A 503 still has a body naming what is down; anything not JSON says nothing about the mirror.
  return (await response.json().catch(() => null)) as { details?: { mirror?: { enabled?: boolean } } } | null;
}

export async function runLoad(options: LoadOptions): Promise<LoadSummary> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const failures: string[] = [];
  const source = options.env ?? process.env;
  // MAX_BATCH_ITEMS of the environment the API is started in. An API given by --url runs with its own
  // environment, not this one: its limit shows as 413 answers, which the summary names.
  const maxBatch = parseConfig(source).http.maxBatchItems;
  if (!options.target && options.spansPerRequest > maxBatch) {
    throw new UsageError(`--spans-per-request must be at most MAX_BATCH_ITEMS (${maxBatch}), got ${options.spansPerRequest}: the API answers bigger batches 413`);
  }
  let url: string;
  let key: string;
  let projectId = '';
  if (options.target) {
    url = options.target.url;
    key = options.target.key;
    // The run ends by comparing Postgres with the mirror: say now, not after the load, that there is none.
    const health = await healthOf(url);
    if (health?.details?.mirror?.enabled === false) {
      throw new UsageError(`the API at ${url} runs with USE_CLICKHOUSE off; npm run load checks the mirror, so start it with USE_CLICKHOUSE=true`);
    }
  }
  const stores = await openStores(source, log, async (db) => {
    if (!options.target) return;
    // Before anything is migrated or started: a key this database does not hold (or a database with no keys at all) ends the run here.
    const project = await new ApiKeyService(new ApiKeysRepository(db)).projectOf(options.target.key).catch(() => null);
    if (!project) throw new UsageError('--key is not a live API key in this DATABASE_URL');
    const rollout = parseConfig(source).clickhouse.projectIds;
    if (rollout.length > 0 && !rollout.includes(project)) {
      throw new UsageError(
        `--key's project ${project} is not in CLICKHOUSE_PROJECT_IDS: it is not mirrored, and the run ends comparing its rows in Postgres and ClickHouse; use a key of a listed project, or add it`,
      );
    }
    projectId = project;
  });
  // The run's own API writes into a project made for the run, which no rollout list names: it mirrors every
  // project, and the run's verify compares it.
  const runEnv = options.target ? stores.env : { ...stores.env, CLICKHOUSE_PROJECT_IDS: '' };
  let api: ApiProcess | null = null;
  try {
    const keys = new ApiKeyService(new ApiKeysRepository(stores.db));
    if (options.target) {
      url = options.target.url;
      key = options.target.key;
    } else {
      const main = await ensureApiBuild(log);
      api = await startApiProcess({ ...runEnv, MIGRATE_ON_START: 'false', LOG_LEVEL: 'warn' }, { main });
      url = api.url;
      projectId = randomUUID();
      key = (await keys.create(projectId)).key;
      log(`API pid ${api.child.pid} on ${url}, project ${projectId}`);
    }

    const headers = { Authorization: `ApiKey ${key}`, 'Content-Type': 'application/json' };
    let spansAcknowledged = 0;
    let spansSent = 0;
    let spansRefused = 0;
    // Per connection: four span batches, an OTLP export, a trace read and a query, in that order.
    const postSpans = {
      method: 'POST',
      path: '/tracing/spans',
      headers,
      setupRequest: (request: Record<string, unknown>, context: Record<string, unknown>) => {
        const { body, traceId } = spansBody(options.spansPerRequest);
        context.traceId = traceId;
        spansSent += options.spansPerRequest;
        return { ...request, body };
      },
      onResponse: (status: number) => {
        if (status === 201) spansAcknowledged += options.spansPerRequest;
        else spansRefused += options.spansPerRequest;
      },
    };
    const requests = [
      postSpans, postSpans, postSpans, postSpans,
      {
        method: 'POST',
        path: '/otlp/v1/traces',
        headers,
        setupRequest: (request: Record<string, unknown>) => {
          spansSent += options.spansPerRequest;
          return { ...request, body: otlpBody(options.spansPerRequest) };
        },
        onResponse: (status: number) => {
          if (status === 200) spansAcknowledged += options.spansPerRequest;
          else spansRefused += options.spansPerRequest;
        },
      },
      {
        method: 'GET',
        headers: { Authorization: headers.Authorization },
        setupRequest: (request: Record<string, unknown>, context: Record<string, unknown>) => ({ ...request, path: `/tracing/traces/${context.traceId}` }),
      },
      { method: 'POST', path: '/tracing/spans/query', headers, body: JSON.stringify({ focus: 'trace', windowing: { limit: 5 } }) },
    ];

    const before = await countBoth(stores, projectId);
    const samples: RssSample[] = [];
    const started = Date.now();
    // The first seconds are JIT and pool warm-up, not a trend.
    const warmupMs = Math.min(10_000, (options.durationSec * 1000) / 5);
    const sampleEveryMs = options.sampleEveryMs ?? (options.durationSec > 60 ? 5_000 : 1_000);
    const sampler = setInterval(() => {
      if (!api?.child.pid) return;
      void rssOf(api.child.pid).then((rss) => {
        const atMs = Date.now() - started;
        if (rss !== null && atMs >= warmupMs) samples.push({ atMs, rssBytes: rss });
      });
    }, sampleEveryMs);
    const progress = setInterval(() => {
      const last = samples[samples.length - 1];
      log(`load: ${Math.round((Date.now() - started) / 1000)} s, ${spansAcknowledged} spans acknowledged${last ? `, API RSS ${mb(last.rssBytes)} MB` : ''}`);
    }, 10_000);

    log(`load: ${options.rate} requests/s for ${options.durationSec} s over ${options.connections} connections, ${options.spansPerRequest} spans per write`);
    let result: AutocannonResult;
    const load = autocannon({
      url,
      connections: options.connections,
      duration: options.durationSec,
      overallRate: options.rate,
      timeout: 10,
      requests,
    });
    const cutShort = () => load.stop();
    options.interrupt?.addEventListener('abort', cutShort, { once: true });
    // A signal while the API was being built or started: a listener added to an aborted signal never runs.
    if (options.interrupt?.aborted) cutShort();
    // The load stops at its next one-second sample. A terminal's Ctrl-C reaches the API this run started as
    // well (same process group), so the requests of that last second fail while it shuts down: not the API's errors.
    const afterCut = { errors: 0, non2xx: 0 };
    load.on('reqError', () => {
      if (options.interrupt?.aborted) afterCut.errors++;
    });
    load.on('response', (...[, status]: unknown[]) => {
      if (options.interrupt?.aborted && (status as number) >= 300) afterCut.non2xx++;
    });
    try {
      result = await load;
    } finally {
      options.interrupt?.removeEventListener('abort', cutShort);
      clearInterval(sampler);
      clearInterval(progress);
    }
    const ranSec = Math.max(1, Math.round((Date.now() - started) / 1000));
    const failedAfterCut = afterCut.errors + afterCut.non2xx;
    if (options.interrupt?.aborted) {
      // Not how many: against an API that has already stopped, the load's connections retry in a tight loop.
      const after = failedAfterCut ? ' (requests that failed after the cut, while the run stopped, are not counted as errors)' : '';
      failures.push(`cut short by ${String(options.interrupt.reason)} after ${ranSec} s of ${options.durationSec} s${after}`);
    }

    const non2xx = result.non2xx - afterCut.non2xx;
    const socketErrors = result.errors - afterCut.errors;
    const errors = non2xx + socketErrors;
    if (errors > 0) failures.push(`${errors} failed requests (${non2xx} non-2xx, ${socketErrors} socket errors, ${result.timeouts} timeouts)`);
    const tooLarge = Number(result.statusCodeStats?.['413']?.count ?? 0);
    if (tooLarge > 0) {
      failures.push(`${tooLarge} writes answered 413: the API's MAX_BATCH_ITEMS (or BODY_LIMIT) is below --spans-per-request ${options.spansPerRequest}`);
    }
    const rss = rssSummary(samples);
    const checkMemory = options.checkMemory ?? options.durationSec >= 60;
    if (checkMemory && rss && rss.lastThirdMb * 1024 * 1024 > rss.firstThirdMb * 1024 * 1024 * RSS_GROWTH_FACTOR + RSS_GROWTH_SLACK_BYTES) {
      failures.push(`API memory grew from ${rss.firstThirdMb} MB (first third) to ${rss.lastThirdMb} MB (last third)`);
    }

    // A store that stopped answering during the run (a server stopped under it) fails the run, named, after
    // the traffic's figures: a bare ECONNREFUSED from the count threw them away.
    let afterRun: StoresAfterRun | null = null;
    try {
      // The mirror flushes on its interval: wait until ClickHouse holds what Postgres holds, or time out.
      const drainDeadline = Date.now() + 60_000;
      let counts = await countBoth(stores, projectId);
      while ((counts.postgres.spans !== counts.clickhouse.spans || counts.postgres.nodes !== counts.clickhouse.nodes) && Date.now() < drainDeadline) {
        await new Promise((done) => setTimeout(done, 500));
        counts = await countBoth(stores, projectId);
      }
      afterRun = { ...counts, postgresSpansAdded: counts.postgres.spans - before.postgres.spans };
    } catch (error) {
      failures.push(`the stores could not be counted after the run: ${(error as Error).message}`);
    }
    if (afterRun) {
      // Every acknowledged span is stored; requests cut off by the end of the run may be stored too. A --key
      // project may hold spans from before the run: what is held to this run's counts is what Postgres gained.
      const { postgres, clickhouse, postgresSpansAdded, gaps } = afterRun;
      if (postgresSpansAdded < spansAcknowledged || postgresSpansAdded > spansSent) {
        failures.push(`Postgres gained ${postgresSpansAdded} spans during the run; the API acknowledged ${spansAcknowledged} of ${spansSent} sent`);
      }
      if (postgres.spans !== clickhouse.spans) failures.push(`spans: ${postgres.spans} in Postgres, ${clickhouse.spans} in ClickHouse`);
      if (postgres.nodes !== clickhouse.nodes) failures.push(`nodes: ${postgres.nodes} in Postgres, ${clickhouse.nodes} in ClickHouse`);
      if (gaps > 0) failures.push(`${gaps} open mirror gaps`);
    }

    let apiExit: LoadSummary['apiExit'] = null;
    if (api) {
      await api.stop();
      apiExit = await api.exited;
      if (apiExit.code !== 0) failures.push(`the API exited with ${JSON.stringify(apiExit)} on SIGTERM`);
      api = null;
    }

    let verify: LoadSummary['verify'] = null;
    if (existsSync(join(ROOT, 'scripts', 'verify.ts'))) {
      verify = await runVerify(runEnv, projectId);
      if (verify.exitCode !== 0) failures.push(`verify exited ${verify.exitCode}: ${verify.output.split('\n').slice(-5).join(' | ')}`);
    }

    return {
      projectId,
      durationSec: options.durationSec,
      ranSec,
      targetRate: options.rate,
      requests: result.requests.total,
      errors,
      statusCodes: Object.fromEntries(Object.entries(result.statusCodeStats ?? {}).map(([code, { count }]) => [code, Number(count)])),
      latencyMs: { p50: result.latency.p50, p99: result.latency.p99, max: result.latency.max },
      spansAcknowledged,
      spansSent,
      spansRefused,
      // Judged only with figures to judge: none where the API is not this run's, or its RSS cannot be read (no /proc).
      memoryChecked: checkMemory && rss !== null,
      rss,
      rssSamples: samples.length,
      stores: afterRun,
      verify,
      apiExit,
      failures,
    };
  } finally {
    await api?.stop();
    await stores.close();
  }
}

/** Why sent and acknowledged differ: the load stops on time, so the last requests of each connection are cut off unanswered. */
function unacknowledged(s: LoadSummary): string {
  const unanswered = s.spansSent - s.spansAcknowledged - s.spansRefused;
  const parts = [
    ...(s.spansRefused ? [`${s.spansRefused} in error answers`] : []),
    ...(unanswered ? [`${unanswered} unanswered: in flight when the run ended, or timed out`] : []),
  ];
  return parts.length ? ` (${parts.join('; ')})` : '';
}

function stored(stores: StoresAfterRun | null): string {
  if (!stores) return 'the stores were not counted (see FAILED)';
  const { postgres, clickhouse, postgresSpansAdded, gaps } = stores;
  return `Postgres ${postgres.spans} spans (${postgresSpansAdded} added by the run) / ${postgres.nodes} nodes; ClickHouse ${clickhouse.spans} spans / ${clickhouse.nodes} nodes; open gaps ${gaps}`;
}

export function formatSummary(s: LoadSummary): string {
  const rss = s.rss
    ? `RSS ${s.rss.minMb}-${s.rss.maxMb} MB (first third ${s.rss.firstThirdMb} MB, last third ${s.rss.lastThirdMb} MB, slope ${s.rss.slopeMbPerMin} MB/min, ${s.rss.samples} samples)`
    : s.apiExit
      ? `RSS not summarised: ${counted(s.rssSamples, 'sample')} after the warm-up, 3 needed (run longer${s.rssSamples === 0 ? '; none are taken where /proc is missing' : ''})`
      : 'RSS not sampled (API not started by this run)';
  const held = s.requests / s.ranSec;
  // Memory and latency are the figures of the rate held: a run far below the one asked did not test that one.
  const belowRate = held < s.targetRate * 0.9 ? '; below the rate asked, so memory and latency are for the rate held' : '';
  return [
    `load summary (project ${s.projectId})`,
    `  requests   ${s.requests} in ${s.ranSec} s${s.ranSec < s.durationSec ? ` of ${s.durationSec}` : ''} (${Math.round(held)}/s held, ${s.targetRate}/s asked${belowRate}), errors ${s.errors}, status ${JSON.stringify(s.statusCodes)}`,
    `  latency    p50 ${s.latencyMs.p50} ms, p99 ${s.latencyMs.p99} ms, max ${s.latencyMs.max} ms`,
    `  memory     ${rss}${s.memoryChecked ? '' : s.rss ? ' (not checked: run shorter than a minute)' : ', so not checked'}`,
    `  spans      ${s.spansAcknowledged} acknowledged of ${s.spansSent} sent${unacknowledged(s)}; ${stored(s.stores)}`,
    `  verify     ${s.verify ? `exit ${s.verify.exitCode}: ${s.verify.output.split('\n').pop()}` : 'not available'}`,
    `  api exit   ${s.apiExit ? JSON.stringify(s.apiExit) : '-'}`,
    s.failures.length ? `FAILED:\n${s.failures.map((f) => `  - ${f}`).join('\n')}` : 'OK',
  ].join('\n');
}

if (require.main === module) {
  runCli(USAGE, async (args, log) => {
    const flags = parseFlags(args, ['--duration', '--rate', '--spans-per-request', '--connections', '--url', '--key'], []);
    const url = flags.values.get('--url');
    const key = flags.values.get('--key');
    if (Boolean(url) !== Boolean(key)) throw new UsageError('--url and --key go together');
    if (url && !/^http:\/\/(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?\/?$/.test(url)) throw new UsageError('--url must be a loopback address (load stays on this machine)');
    const spansPerRequest = positiveInt(flags, '--spans-per-request', 10);
    // Ctrl-C ends the load early and still counts, verifies and prints the summary; another one (not npm's
    // copy of the first: isNpmRepeat) stops at once.
    const interrupt = new AbortController();
    let first: { signal: string; at: number } | undefined;
    const onSignal = (signal: 'SIGINT' | 'SIGTERM') => {
      if (first === undefined) {
        first = { signal, at: Date.now() };
        log(`load: ${signal} received: ending the load early, then the summary (${signal} again after a second stops at once)`);
        interrupt.abort(signal);
      } else if (!isNpmRepeat(first, signal)) {
        process.exit(SIGNAL_EXIT_CODES[signal]);
      }
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    const summary = await runLoad({
      durationSec: positiveInt(flags, '--duration', 180),
      rate: positiveInt(flags, '--rate', 200),
      spansPerRequest,
      connections: positiveInt(flags, '--connections', 16),
      target: url && key ? { url: url.replace(/\/$/, ''), key } : undefined,
      interrupt: interrupt.signal,
      log,
    }).catch((error: unknown) => {
      // Ctrl-C reaches the build's tsc and the API too (one process group): what then fails is the interrupt's doing.
      if (!interrupt.signal.aborted) throw error;
      log(`load: ended by ${String(interrupt.signal.reason)}: ${errorText(error)}`);
      return process.exit(SIGNAL_EXIT_CODES[interrupt.signal.reason as keyof typeof SIGNAL_EXIT_CODES]);
    });
    process.stdout.write(`${formatSummary(summary)}\n`);
    if (interrupt.signal.aborted) process.exit(SIGNAL_EXIT_CODES[interrupt.signal.reason as keyof typeof SIGNAL_EXIT_CODES]);
    if (summary.failures.length) throw new Error(`${counted(summary.failures.length, 'check')} failed`);
  });
}
