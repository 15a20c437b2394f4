import { performance } from 'node:perf_hooks';
import { parseConfig } from '../../src/config/app-config';
import { createClickHouseClients } from '../../src/dbs/clickhouse/clickhouse-clients';
import { SPAN_TABLE, toSpanClickHouseRow } from '../../src/dbs/clickhouse/span-clickhouse-row.mapper';
import { traceIdToUuid } from '../../src/tracing/trace-id';
import { BenchFlags } from './support/cli';
import { ApiClient, openLoop, postOk, sleep } from './support/http-load';
import { freePort } from '../cli/free-port';
import { startApiProcess } from './support/processes';
import { BenchReport, runBench } from './support/report';
import { createApiKey, startBenchClickHouse, startBenchPostgres } from './support/servers';
import { benchTrace, committedSpans } from './support/spans';
import { num, quantile, rotated, showSpread, spread, table } from './support/stats';

const USAGE = `usage: npm run bench:mirror-lag -- [options]

Mirror lag: from Postgres's commit of a POST /tracing/spans until all of
that request's spans are readable in ClickHouse (SELECT ... FINAL by trace,
polled), at a steady request rate. The commit falls between the request's
start and its answer, so the lag is given from both: from the start (at
most the true lag plus the request's own time; the goal is judged on it)
and from the answer (at least the true lag less the answer's way back). The floor,
measured the same way in the same run: the same rows inserted straight into
ClickHouse with @clickhouse/client, timed from the start of the insert.
Goal: p99 <= MIRROR_FLUSH_INTERVAL_MS + 1 s.

  --rate N          requests per second (default 50)
  --spans N         spans per request (default 10)
  --seconds N       length of each phase (default 15)
  --rounds N        rounds; each runs a mirror phase and a floor phase (default 3)
  --poll-ms N       pause between polls (default 25)
  --flush-interval-ms N   the API's MIRROR_FLUSH_INTERVAL_MS (default: the product default)
  --quick           2 rounds of 5 s: a smoke run`;

type Path = 'mirror' | 'floor';

async function main(): Promise<void> {
  const flags = new BenchFlags(process.argv.slice(2), USAGE);
  const quick = flags.has('quick');
  const defaults = parseConfig({}).mirror;
  const options = {
    rate: flags.int('rate', 50),
    spans: flags.int('spans', 10),
    seconds: flags.int('seconds', quick ? 5 : 15),
    rounds: flags.int('rounds', quick ? 2 : 3),
    pollMs: flags.int('poll-ms', 25, 0),
    flushIntervalMs: flags.int('flush-interval-ms', defaults.flushIntervalMs, 10),
  };
  const report = new BenchReport('mirror-lag', options);
  const log = (line: string) => report.print(line);

  const postgres = await startBenchPostgres(log);
  const clickhouse = await startBenchClickHouse(log);
  let stopApi: () => Promise<void> = async () => undefined;
  let describeApi: (() => Promise<string>) | null = null;
  try {
    const database = await postgres.createDatabase('lag');
    const config = await clickhouse.createDatabase('lag');
    const api = await startApiProcess(
      {
        DATABASE_URL: database.url,
        MIGRATE_ON_START: 'false',
        LOG_LEVEL: 'warn',
        USE_CLICKHOUSE: 'true',
        CLICKHOUSE_URL: clickhouse.url,
        CLICKHOUSE_DATABASE: config.database,
        MIRROR_FLUSH_INTERVAL_MS: String(options.flushIntervalMs),
      },
      await freePort(),
      log,
    );
    stopApi = api.stop;
    describeApi = api.describe;
    const { key, projectId } = await createApiKey(database.db);
    const clients = createClickHouseClients(config, clickhouse.url);
    const client = new ApiClient(api.url, key, 64);

    // Trace (as ClickHouse's UUID) -> when its request started and was answered (a direct insert: when it started).
    const pending = new Map<string, { sent: number; answered: number | null }>();
    let polling = true;
    let pollErrors = 0;
    const lags = new Map<string, { fromSent: number; fromAnswer: number }>();
    const poller = (async () => {
      while (polling) {
        if (pending.size > 0) {
          try {
            const ids = [...pending.keys()];
            const result = await clients.query.query({
              query: `SELECT toString(trace_id) AS t FROM ${SPAN_TABLE} FINAL WHERE project_id = {p:UUID} AND trace_id IN {ids:Array(UUID)} GROUP BY trace_id HAVING count() = {n:UInt32}`,
              query_params: { p: projectId, ids, n: options.spans },
              format: 'JSONEachRow',
            });
            const seen = await result.json<{ t: string }>();
            const now = performance.now();
            for (const { t } of seen) {
              const times = pending.get(t);
              if (times === undefined) continue;
              pending.delete(t);
              // Readable before its answer came back: the lag from the answer is then nothing.
              lags.set(t, { fromSent: now - times.sent, fromAnswer: times.answered === null ? 0 : now - times.answered });
            }
          } catch (error) {
            // A failed poll only delays the sample; the next one looks again.
            pollErrors += 1;
            if (pollErrors <= 3) log(`poll failed: ${(error as Error).message}`);
          }
        }
        await sleep(options.pollMs);
      }
    })();

    const phase = async (path: Path): Promise<{ lags: number[]; lagsFromAnswer: number[]; missing: number; commitMs: number[] }> => {
      lags.clear();
      const total = Math.floor(options.seconds * options.rate);
      const traces = Array.from({ length: total }, () => benchTrace(options.spans));
      const direct = path === 'floor' ? committedSpans(total * options.spans, projectId) : [];
      const commitMs: number[] = [];
      await openLoop(options.rate, options.seconds * 1000, async (i) => {
        if (path === 'mirror') {
          const body = Buffer.from(JSON.stringify({ spans: traces[i] }));
          const times = { sent: performance.now(), answered: null as number | null };
          pending.set(traceIdToUuid(traces[i][0].trace_id), times);
          commitMs.push(await postOk(client, '/tracing/spans', body));
          times.answered = performance.now();
        } else {
          const rows = direct.slice(i * options.spans, (i + 1) * options.spans);
          // Every row of one insert shares the trace, like one request's spans.
          for (const row of rows) row.trace_id = rows[0].trace_id;
          const started = performance.now();
          pending.set(traceIdToUuid(rows[0].trace_id), { sent: started, answered: started });
          await clients.insert.insert({ table: SPAN_TABLE, values: rows.map(toSpanClickHouseRow), format: 'JSONEachRow', clickhouse_settings: { async_insert: 0, wait_end_of_query: 1 } });
        }
      });
      const deadline = Date.now() + options.flushIntervalMs + 30_000;
      while (pending.size > 0 && Date.now() < deadline) await sleep(50);
      const missing = pending.size;
      pending.clear();
      return { lags: [...lags.values()].map((l) => l.fromSent), lagsFromAnswer: [...lags.values()].map((l) => l.fromAnswer), missing, commitMs };
    };

    log('warming up (not measured)');
    await phase('mirror');
    const runs: Array<{ round: number; path: Path; p50: number; p99: number; max: number; p99FromAnswer: number; samples: number; missing: number; commitP50: number; commitP99: number }> = [];
    for (let round = 0; round < options.rounds; round++) {
      for (const path of rotated<Path>(['mirror', 'floor'], round)) {
        const result = await phase(path);
        const run = {
          round,
          path,
          p50: quantile(result.lags, 0.5),
          p99: quantile(result.lags, 0.99),
          max: Math.max(...result.lags),
          p99FromAnswer: quantile(result.lagsFromAnswer, 0.99),
          samples: result.lags.length,
          missing: result.missing,
          commitP50: quantile(result.commitMs, 0.5),
          commitP99: quantile(result.commitMs, 0.99),
        };
        runs.push(run);
        log(`round ${round + 1} ${path.padEnd(6)} lag p50 ${num(run.p50, 0)} ms, p99 ${num(run.p99, 0)} ms, max ${num(run.max, 0)} ms (p99 from the answer ${num(run.p99FromAnswer, 0)} ms) over ${run.samples} requests${run.missing ? `, ${run.missing} never readable` : ''}`);
      }
    }
    polling = false;
    await poller;

    const of = (path: Path) => runs.filter((r) => r.path === path).sort((a, b) => a.round - b.round);
    log(`\nlag in ms from the request's start (median of rounds, min–max), and its p99 from the answer; ${options.rate} req/s x ${options.spans} spans; flush interval ${options.flushIntervalMs} ms; poll every ${options.pollMs} ms`);
    log(
      table([
        ['path', 'p50', 'p99', 'max', 'p99 from the answer', 'never readable'],
        ...(['mirror', 'floor'] as Path[]).map((path) => [
          path === 'mirror' ? 'API -> mirror -> ClickHouse' : 'direct insert (floor)',
          showSpread(spread(of(path).map((r) => r.p50)), 0),
          showSpread(spread(of(path).map((r) => r.p99)), 0),
          showSpread(spread(of(path).map((r) => r.max)), 0),
          showSpread(spread(of(path).map((r) => r.p99FromAnswer)), 0),
          String(of(path).reduce((n, r) => n + r.missing, 0)),
        ]),
      ]),
    );
    const excess = spread(of('mirror').map((m, i) => m.p99 - of('floor')[i].p99));
    log(`mirror p99 minus floor p99: ${showSpread(excess, 0, ' ms')}; API answer p50/p99 during the mirror phases: ${showSpread(spread(of('mirror').map((r) => r.commitP50)))} / ${showSpread(spread(of('mirror').map((r) => r.commitP99)))} ms`);
    const p99 = spread(of('mirror').map((r) => r.p99));
    const target = options.flushIntervalMs + 1000;
    report.goal({ name: 'mirror lag p99', target: `<= ${target} ms (flush interval + 1 s)`, spread: p99, unit: ' ms', met: p99.median <= target && of('mirror').every((r) => r.missing === 0) });
    client.close();
    await clients.close();
    report.finish({ runs, excessP99Ms: excess });
  } catch (error) {
    // A failed request alone does not say whether the API failed or the connection did: show what the API said.
    if (describeApi) log(await describeApi());
    throw error;
  } finally {
    await stopApi();
    await clickhouse.stop();
    await postgres.stop();
  }
}

runBench(main);
