import { createClient } from '@clickhouse/client';
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Registry } from 'prom-client';
import { parseConfig } from '../../src/config/app-config';
import { BatchWriter } from '../../src/dbs/clickhouse/batch-writer';
import { MirrorGap } from '../../src/dbs/clickhouse/gap-ledger';
import { clickHouseClientOptions, createClickHouseClients } from '../../src/dbs/clickhouse/clickhouse-clients';
import { ClickHouseSink } from '../../src/dbs/clickhouse/clickhouse-sink';
import { createMirrorMetrics } from '../../src/dbs/clickhouse/mirror-metrics';
import { SPAN_TABLE, SpanClickHouseRow, toSpanClickHouseRow, toSpanMirrorRow } from '../../src/dbs/clickhouse/span-clickhouse-row.mapper';
import { BenchFlags } from './support/cli';
import { sleep } from './support/http-load';
import { cpuSecondsOf } from './support/proc';
import { BenchReport, runBench } from './support/report';
import { startBenchClickHouse } from './support/servers';
import { committedSpanSource } from './support/spans';
import { num, rotated, showSpread, spread, table } from './support/stats';

const USAGE = `usage: npm run bench:mirror-throughput -- [options]

Spans per second the mirror sustains: committed spans through the row mapper,
BatchWriter (the product's settings: MIRROR_FLUSH_ROWS etc. from the
environment, defaults otherwise) and ClickHouseSink into ClickHouse, against
the ceiling: the same spans mapped and inserted with @clickhouse/client's
insert() (JSONEachRow, the same client options and batch size, brotli
quality 0 by the client as the sink compresses), one insert in flight while the next batch
is mapped, as the writer does. CPU time per span for this process and, for the local
endpoint, the ClickHouse process. Goal: writer >= 80% of the ceiling.

  --rows N      spans per path per round (default 100000)
  --rounds N    rounds, paths interleaved and rotated (default 5)
  --write N     spans per write() call, as one API request hands them over (default 50)
  --only PATH   run only raw or writer (for profiling with node --cpu-prof)
  --quick       2 rounds of 20000 spans: a smoke run`;

type Path = 'raw' | 'writer';

interface Run {
  round: number;
  path: Path;
  seconds: number;
  spansPerSecond: number;
  cpuMicrosPerSpan: number;
  clickhouseCpuMicrosPerSpan: number | null;
}

async function main(): Promise<void> {
  const flags = new BenchFlags(process.argv.slice(2), USAGE);
  const quick = flags.has('quick');
  const options = {
    rows: flags.int('rows', quick ? 20_000 : 100_000),
    rounds: flags.int('rounds', quick ? 2 : 5),
    write: flags.int('write', 50),
  };
  const only = flags.value('only', ['raw', 'writer'] as const);
  const settings = parseConfig({ ...process.env, USE_CLICKHOUSE: 'true' }).mirror;
  const report = new BenchReport('mirror-throughput', { ...options, writer: settings });
  const log = (line: string) => report.print(line);
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) log('note: run with node --expose-gc to collect garbage between phases (npm run bench does)');

  const clickhouse = await startBenchClickHouse(log);
  try {
    const config = await clickhouse.createDatabase('throughput');
    const clients = createClickHouseClients(config, clickhouse.url);
    // The client compressing as the API's sink does (brotli quality 0), as a user of the client would have it.
    const ceilingClient = createClient({ ...clickHouseClientOptions(config, clickhouse.url), compression: { request: { codec: 'br', quality: 0 }, response: false } });
    const projectId = randomUUID();

    const next = committedSpanSource(projectId);

    // The ceiling gets the writer's overlap: the next batch is mapped (in the same
    // write-sized steps, yielding between them) while the previous one is in flight.
    const raw = async (count: number) => {
      let inFlight: Promise<unknown> = Promise.resolve();
      for (let i = 0; i < count; i += settings.flushRows) {
        const values: SpanClickHouseRow[] = [];
        const size = Math.min(settings.flushRows, count - i);
        for (let j = 0; j < size; j += options.write) {
          for (const span of next(Math.min(options.write, size - j))) values.push(toSpanClickHouseRow(span));
          await new Promise((resolve) => setImmediate(resolve));
        }
        await inFlight;
        inFlight = ceilingClient.insert({
          table: SPAN_TABLE,
          values,
          format: 'JSONEachRow',
          clickhouse_settings: { async_insert: 0, wait_end_of_query: 1 },
        });
      }
      await inFlight;
    };

    let gapRows = 0;
    const writer = async (count: number) => {
      const batchWriter = new BatchWriter(settings, {
        sink: new ClickHouseSink(clients.insert, { compress: true }),
        gapRecorder: {
          record: async (gaps: MirrorGap[]) => {
            gapRows += gaps.reduce((n, g) => n + g.rowCount, 0);
            return gaps.length;
          },
        },
        logger: { info: () => undefined, warn: (o, m) => log(`writer: ${m} ${JSON.stringify(o)}`), error: (o, m) => log(`writer: ${m} ${JSON.stringify(o)}`) },
        metrics: createMirrorMetrics(new Registry()),
      });
      // As the API would: one write() per request, with the event loop free between them.
      // Producing only while two batches' worth is queued keeps memory bounded without starving the writer.
      for (let i = 0; i < count; i += options.write) {
        while (batchWriter.stats().queuedRows >= 2 * settings.flushRows) await sleep(1);
        batchWriter.write(next(Math.min(options.write, count - i)).map(toSpanMirrorRow));
        await new Promise((resolve) => setImmediate(resolve));
      }
      await batchWriter.drain();
      await batchWriter.shutdown();
    };

    const runs: Run[] = [];
    log(`warming up both paths (not measured)`);
    const paths: Path[] = only ? [only] : ['raw', 'writer'];
    for (const path of paths) await (path === 'raw' ? raw : writer)(Math.min(options.rows, 20_000));
    for (let round = 0; round < options.rounds; round++) {
      for (const path of rotated(paths, round)) {
        gc?.();
        const cpu = process.cpuUsage();
        const chCpu = clickhouse.pid ? cpuSecondsOf(clickhouse.pid) : 0;
        const started = performance.now();
        await (path === 'raw' ? raw : writer)(options.rows);
        const seconds = (performance.now() - started) / 1000;
        const used = process.cpuUsage(cpu);
        const run: Run = {
          round,
          path,
          seconds,
          spansPerSecond: options.rows / seconds,
          cpuMicrosPerSpan: (used.user + used.system) / options.rows,
          clickhouseCpuMicrosPerSpan: clickhouse.pid ? ((cpuSecondsOf(clickhouse.pid) - chCpu) * 1e6) / options.rows : null,
        };
        runs.push(run);
        log(`round ${round + 1} ${path.padEnd(6)} ${num(run.spansPerSecond, 0)} spans/s, ${num(run.cpuMicrosPerSpan, 1)} µs CPU/span here, ${run.clickhouseCpuMicrosPerSpan === null ? '?' : num(run.clickhouseCpuMicrosPerSpan, 1)} µs CPU/span in ClickHouse`);
      }
    }
    if (only) {
      await Promise.all([clients.close(), ceilingClient.close()]);
      report.finish({ runs });
      return;
    }
    if (gapRows) throw new Error(`the writer recorded ${gapRows} rows as gaps: the figures do not count`);

    const of = (path: Path) => runs.filter((r) => r.path === path).sort((a, b) => a.round - b.round);
    const ratios = spread(of('writer').map((w, i) => w.spansPerSecond / of('raw')[i].spansPerSecond));
    const cpuRatios = spread(of('writer').map((w, i) => w.cpuMicrosPerSpan / of('raw')[i].cpuMicrosPerSpan));
    const counted = await clients.query.query({ query: `SELECT count() AS n FROM ${SPAN_TABLE} WHERE project_id = {p:UUID}`, query_params: { p: projectId }, format: 'JSONEachRow' });
    const [{ n }] = await counted.json<{ n: string }>();
    const expected = (options.rounds + 1) * 2 * options.rows - 2 * (options.rows - Math.min(options.rows, 20_000));
    log(`\nrows in ClickHouse: ${n} (expected ${expected})`);
    log(
      table([
        ['path', 'spans/s', 'µs CPU/span (this process)', 'µs CPU/span (ClickHouse)'],
        ...(['raw', 'writer'] as Path[]).map((path) => [
          path === 'raw' ? 'raw insert (ceiling)' : 'BatchWriter + sink',
          showSpread(spread(of(path).map((r) => r.spansPerSecond)), 0),
          showSpread(spread(of(path).map((r) => r.cpuMicrosPerSpan)), 1),
          clickhouse.pid ? showSpread(spread(of(path).map((r) => r.clickhouseCpuMicrosPerSpan!)), 1) : 'n/a',
        ]),
      ]),
    );
    log(`writer / ceiling, spans/s: ${showSpread(ratios, 3)}; CPU per span writer / raw: ${showSpread(cpuRatios, 3)}`);
    report.goal({ name: 'mirror throughput: BatchWriter spans/s / raw insert spans/s', target: '>= 0.80', spread: ratios, met: ratios.median >= 0.8 });
    await Promise.all([clients.close(), ceilingClient.close()]);
    report.finish({ runs, ratio: ratios, cpuRatio: cpuRatios, rowsInClickHouse: Number(n), expectedRows: expected });
  } finally {
    await clickhouse.stop();
  }
}

runBench(main);
