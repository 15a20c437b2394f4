import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Registry } from 'prom-client';
import { parseConfig } from '../../src/config/app-config';
import { BatchWriter } from '../../src/dbs/clickhouse/batch-writer';
import { MirrorGap } from '../../src/dbs/clickhouse/gap-ledger';
import { createClickHouseClients } from '../../src/dbs/clickhouse/clickhouse-clients';
import { ClickHouseSink } from '../../src/dbs/clickhouse/clickhouse-sink';
import { createMirrorMetrics } from '../../src/dbs/clickhouse/mirror-metrics';
import { SPAN_TABLE, SpanRecord, toSpanInsertLine } from '../../src/dbs/clickhouse/span-clickhouse-row.mapper';
import { spanMirrorPlan } from '../../src/dbs/dual-write/mirror-plans';
import { BenchFlags } from './support/cli';
import { sleep } from './support/http-load';
import { cpuSecondsOf } from './support/proc';
import { rawInsert } from './support/raw-insert';
import { BenchReport, runBench } from './support/report';
import { startBenchClickHouse } from './support/servers';
import { committedSpanSource } from './support/spans';
import { num, rotated, showSpread, spread, table } from './support/stats';

const USAGE = `usage: npm run bench:mirror-throughput -- [options]

Spans per second the mirror sustains: committed spans through the row mapper,
BatchWriter (the product's settings: MIRROR_FLUSH_ROWS etc. from the
environment, defaults otherwise) and ClickHouseSink into ClickHouse, against
the ceiling: the same spans' insert lines (toSpanInsertLine, as the writer is
handed them) written once into a body and sent with @clickhouse/client's exec(),
in batches cut by the writer's rule (flushRows, or flushBytes of lines), with
the sink's settings and compression (brotli quality 0, text mode, 1 MiB
chunks), on a client with the writer's options; one insert in flight while the
next batch is built, as the writer does. No queue, records or gap fields. CPU
time per span for this process and, for the local endpoint, the ClickHouse
process. Both paths build their spans as they go; that cost alone is
measured after the rounds and printed beside them. Goal: writer >= 80% of
the ceiling.

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
  /** Inserts sent: the ceiling's batches are to be the writer's. */
  batches: number;
}

/** A span's row as the mirror hands it to the writer (Mirror.mapBacklog): its gap fields and its insert line. */
const mirrorRow = (span: SpanRecord) => ({ line: spanMirrorPlan.toLine(span), ...spanMirrorPlan.toGapRow(span) });

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
    // The ceiling's own client, with the same options as the writer's.
    const ceilingClients = createClickHouseClients(config, clickhouse.url);
    const projectId = randomUUID();

    const next = committedSpanSource(projectId);

    // Two bodies, each room for a batch's lines and newlines: one in flight while the next is written.
    let [body, spare] = [0, 1].map(() => Buffer.allocUnsafe(settings.flushBytes + settings.flushRows));
    // The ceiling gets the writer's overlap: the next batch is built (in the same
    // write-sized steps, yielding between them) while the previous one is in flight.
    const raw = async (count: number): Promise<number> => {
      let inFlight: Promise<void> = Promise.resolve();
      let batches = 0;
      let rows = 0;
      let lineBytes = 0;
      let at = 0;
      const send = async () => {
        const batch = body.subarray(0, at);
        await inFlight;
        inFlight = rawInsert(ceilingClients.insert, `INSERT INTO ${SPAN_TABLE} FORMAT JSONEachRow`, [batch], { compress: true, dedupToken: randomUUID() });
        [body, spare] = [spare, body];
        batches += 1;
        rows = lineBytes = at = 0;
      };
      for (let i = 0; i < count; i += options.write) {
        for (const span of next(Math.min(options.write, count - i))) {
          const line = toSpanInsertLine(span);
          const length = Buffer.byteLength(line, 'utf8');
          // The writer's cut (RowLog.take): at flushRows, or before the line that would take the batch's lines past flushBytes.
          if (rows === settings.flushRows || (rows > 0 && lineBytes + length > settings.flushBytes)) await send();
          if (at + length + 1 > body.length) throw new Error(`a ${length}-byte line is over MIRROR_FLUSH_BYTES; the ceiling cannot send it alone as the writer would`);
          at += body.write(line, at, 'utf8');
          body[at++] = 0x0a;
          rows += 1;
          lineBytes += length;
        }
        await new Promise((resolve) => setImmediate(resolve));
      }
      if (rows > 0) await send();
      await inFlight;
      return batches;
    };

    let gapRows = 0;
    const writer = async (count: number): Promise<number> => {
      const metrics = createMirrorMetrics(new Registry());
      const batchWriter = new BatchWriter(settings, {
        sink: new ClickHouseSink(clients.insert, { compress: true }),
        gapRecorder: {
          record: async (gaps: MirrorGap[]) => {
            gapRows += gaps.reduce((n, g) => n + g.rowCount, 0);
            return gaps.length;
          },
        },
        logger: { info: () => undefined, warn: (o, m) => log(`writer: ${m} ${JSON.stringify(o)}`), error: (o, m) => log(`writer: ${m} ${JSON.stringify(o)}`) },
        metrics,
      });
      // As the API would: one write() per request, with the event loop free between them.
      // Producing only while two batches' worth is queued keeps memory bounded without starving the writer.
      for (let i = 0; i < count; i += options.write) {
        while (batchWriter.stats().queuedRows >= 2 * settings.flushRows) await sleep(1);
        batchWriter.write(next(Math.min(options.write, count - i)).map(mirrorRow));
        await new Promise((resolve) => setImmediate(resolve));
      }
      await batchWriter.drain();
      await batchWriter.shutdown();
      const { values } = await metrics.flushRows.get();
      return values.find((v) => v.metricName === 'mirror_flush_rows_count')?.value ?? 0;
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
        const batches = await (path === 'raw' ? raw : writer)(options.rows);
        const seconds = (performance.now() - started) / 1000;
        const used = process.cpuUsage(cpu);
        const run: Run = {
          round,
          path,
          seconds,
          spansPerSecond: options.rows / seconds,
          cpuMicrosPerSpan: (used.user + used.system) / options.rows,
          clickhouseCpuMicrosPerSpan: clickhouse.pid ? ((cpuSecondsOf(clickhouse.pid) - chCpu) * 1e6) / options.rows : null,
          batches,
        };
        runs.push(run);
        log(`round ${round + 1} ${path.padEnd(6)} ${num(run.spansPerSecond, 0)} spans/s, ${num(run.cpuMicrosPerSpan, 1)} µs CPU/span here, ${run.clickhouseCpuMicrosPerSpan === null ? '?' : num(run.clickhouseCpuMicrosPerSpan, 1)} µs CPU/span in ClickHouse, ${batches} inserts of ${num(options.rows / batches, 0)} spans on average`);
      }
    }
    if (only) {
      await Promise.all([clients.close(), ceilingClients.close()]);
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
        ['path', 'spans/s', 'µs CPU/span (this process)', 'µs CPU/span (ClickHouse)', 'spans per insert'],
        ...(['raw', 'writer'] as Path[]).map((path) => [
          path === 'raw' ? 'raw insert (ceiling)' : 'BatchWriter + sink',
          showSpread(spread(of(path).map((r) => r.spansPerSecond)), 0),
          showSpread(spread(of(path).map((r) => r.cpuMicrosPerSpan)), 1),
          clickhouse.pid ? showSpread(spread(of(path).map((r) => r.clickhouseCpuMicrosPerSpan!)), 1) : 'n/a',
          showSpread(spread(of(path).map((r) => options.rows / r.batches)), 0),
        ]),
      ]),
    );
    log(`writer / ceiling, spans/s: ${showSpread(ratios, 3)}; CPU per span writer / raw: ${showSpread(cpuRatios, 3)}`);
    // Both paths build their spans in the loop they are timed in (committedSpanSource: a copy of a pooled span
    // with fresh ids and times), so both figures include it: measured alone, to read them by.
    const sourceCpu: number[] = [];
    for (let i = 0; i < 3; i++) {
      gc?.();
      const before = process.cpuUsage();
      for (let built = 0; built < options.rows; built += options.write) next(Math.min(options.write, options.rows - built));
      const used = process.cpuUsage(before);
      sourceCpu.push((used.user + used.system) / options.rows);
    }
    const source = spread(sourceCpu);
    log(`the span source alone (in both paths' figures): ${showSpread(source, 1)} µs CPU/span, 3 runs`);
    report.goal({ name: 'mirror throughput: BatchWriter spans/s / raw insert spans/s', target: '>= 0.80', spread: ratios, met: ratios.median >= 0.8 });
    await Promise.all([clients.close(), ceilingClients.close()]);
    report.finish({ runs, ratio: ratios, cpuRatio: cpuRatios, sourceCpuMicrosPerSpan: source, rowsInClickHouse: Number(n), expectedRows: expected });
  } finally {
    await clickhouse.stop();
  }
}

runBench(main);
