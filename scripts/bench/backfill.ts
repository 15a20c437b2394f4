import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { pipeline } from 'node:stream';
import { createClient } from '@clickhouse/client';
import { sql } from 'kysely';
import { parseConfig } from '../../src/config/app-config';
import { Backfill, DEFAULT_BACKFILL_OPTIONS } from '../../src/dbs/backfill/backfill';
import { CompactJsonbColumns } from '../../src/dbs/backfill/copy/compact-jsonb-columns';
import { copyOut } from '../../src/dbs/backfill/copy/postgres-copy-out';
import { spanHistory } from '../../src/dbs/backfill/history-entities';
import { inlined, KeysetReader } from '../../src/dbs/backfill/keyset-reader';
import { clickHouseClientOptions } from '../../src/dbs/clickhouse/clickhouse-clients';
import { connectClickHouse, connectPostgres } from '../cli/history-cli';
import { BenchFlags } from './support/cli';
import { cpuSecondsOf, treeCpuSecondsOf } from './support/proc';
import { rawInsert } from './support/raw-insert';
import { BenchReport, runBench } from './support/report';
import { startBenchClickHouse, startBenchPostgres } from './support/servers';
import { num, rotated, showSpread, spread, table } from './support/stats';

const USAGE = `usage: npm run bench:backfill -- [options]

Backfill throughput: spans with ~1 KB of realistic attributes, generated in
Postgres (INSERT ... SELECT generate_series), copied into ClickHouse by the
backfill (src/dbs/backfill, with its default batches unless --batch-rows or
--batch-bytes say otherwise, connected as \`npm run backfill\` connects),
against two ceilings measured in the same run, interleaved:
  - Postgres read: a keyset SELECT of the same columns streaming every row,
    page after page (the backfill's batch size), as COPY text (jsonb as its
    text), counted and not parsed;
  - ClickHouse insert: the bytes the backfill sends for the first rows (its
    batches' COPY output, jsonb fields made compact, TabSeparated), read
    into memory beforehand and inserted with @clickhouse/client as its sink
    inserts them (the same settings, client options and compression, at most
    two inserts in flight) into an empty table.
Each path's setup (a migrated ClickHouse database, connections) is done
before its clock starts.
Goals: >= 50,000 spans/s, and >= 1/2 of the slower ceiling.

  --rows N          spans to generate and copy (default 1000000)
  --rounds N        rounds (default 3)
  --ceiling-rows N  rows held in memory for the ClickHouse insert ceiling (default 200000)
  --batch-rows N    rows per batch, for the backfill and both ceilings (default: the backfill's, ${DEFAULT_BACKFILL_OPTIONS.batchRows})
  --batch-bytes N   bytes per backfill batch, as Postgres stores the rows (default: the backfill's, ${DEFAULT_BACKFILL_OPTIONS.batchBytes})
  --quick           50000 rows, 2 rounds: a smoke run`;

type Path = 'backfill' | 'postgres read' | 'clickhouse insert';

/** A path with its setup done (databases, connections), before its clock starts: the run that is timed, and what to close after. */
interface Prepared {
  /** Resolves the rows copied. */
  run(): Promise<number>;
  close(): Promise<void>;
}

interface Run {
  round: number;
  path: Path;
  rows: number;
  seconds: number;
  rowsPerSecond: number;
  /** CPU µs per row: this process, the Postgres server, the ClickHouse server. */
  cpu: { node: number; postgres: number | null; clickhouse: number | null };
}

/** ~18 words each; the attributes draw from these plus an md5, so rows differ and compress like text. */
function sentences(): string[] {
  const words = 'the of to and in that is for it as with was on be by this are or from at which retrieval context answer question summary document model token prompt user assistant system tool call result error latency cost invoice customer order refund policy account search embedding vector index query chunk page section citation source evidence step'.split(' ');
  return Array.from({ length: 64 }, () => Array.from({ length: 18 }, () => words[Math.floor(Math.random() * words.length)]).join(' '));
}

async function main(): Promise<void> {
  const flags = new BenchFlags(process.argv.slice(2), USAGE);
  const quick = flags.has('quick');
  const options = {
    rows: flags.int('rows', quick ? 50_000 : 1_000_000),
    rounds: flags.int('rounds', quick ? 2 : 3),
    ceilingRows: flags.int('ceiling-rows', quick ? 20_000 : 200_000),
    batchRows: flags.int('batch-rows', DEFAULT_BACKFILL_OPTIONS.batchRows),
    batchBytes: flags.int('batch-bytes', DEFAULT_BACKFILL_OPTIONS.batchBytes),
  };
  const report = new BenchReport('backfill', options);
  const log = (line: string) => report.print(line);

  const postgres = await startBenchPostgres(log);
  const clickhouse = await startBenchClickHouse(log);
  try {
    const database = await postgres.createDatabase('backfill');
    const projectId = randomUUID();
    const generateStarted = performance.now();
    const chunk = 100_000;
    const text = sentences();
    await sql`set synchronous_commit = off`.execute(database.db);
    for (let from = 1; from <= options.rows; from += chunk) {
      const to = Math.min(options.rows, from + chunk - 1);
      // 10 spans per trace over ~10 days of created_at, microseconds included; status, names and sizes vary by row.
      await sql`
        insert into spans (project_id, trace_id, span_id, parent_id, trace_type, span_type, span_kind, span_name,
                           start_time, end_time, status_code, status_message, attributes, events, created_at, updated_at)
        select ${projectId}::uuid, md5('trace' || (i / 10))::uuid, decode(lpad(to_hex(i), 16, '0'), 'hex'),
               case when i % 10 = 0 then null else decode(lpad(to_hex(i - i % 10), 16, '0'), 'hex') end,
               'invocation', (array['workflow','llm','tool','embedding','chain','task'])[1 + i % 6], 'SPAN_KIND_CLIENT', 'llm call ' || (i % 8),
               t - interval '2 seconds', t - interval '1 second',
               case when i % 50 = 0 then 'STATUS_CODE_ERROR' else 'STATUS_CODE_OK' end,
               case when i % 50 = 0 then 'upstream timed out after 30 s' end,
               jsonb_build_object(
                 'ag', jsonb_build_object(
                   'data', jsonb_build_object(
                     'inputs', jsonb_build_object('prompt', jsonb_build_array(
                       jsonb_build_object('role', 'system', 'content', (${text}::text[])[1 + i % 64]),
                       jsonb_build_object('role', 'user', 'content', (${text}::text[])[1 + (i * 7) % 64] || ' ' || md5(i::text)))),
                     'outputs', jsonb_build_object('completion', jsonb_build_array(
                       jsonb_build_object('role', 'assistant', 'content', (${text}::text[])[1 + (i * 13) % 64] || ' ' || md5((-i)::text))))),
                   'metrics', jsonb_build_object(
                     'tokens', jsonb_build_object('prompt', 200 + i % 400, 'completion', 50 + i % 300, 'total', 250 + i % 400 + i % 300),
                     'costs', jsonb_build_object('total', (i % 1000) * 0.00001)),
                   'meta', jsonb_build_object('environment', 'production', 'session_id', md5('session' || (i / 100))::uuid::text)),
                 'gen_ai', jsonb_build_object(
                   'system', 'openai',
                   'request', jsonb_build_object('model', 'gpt-4o-2024-08-06', 'temperature', 0.2, 'max_tokens', 1024),
                   'usage', jsonb_build_object('input_tokens', 200 + i % 400, 'output_tokens', 50 + i % 300))),
               jsonb_build_array(jsonb_build_object('name', 'first_token', 'attributes', jsonb_build_object('n', i % 10))),
               t, t
        from generate_series(${from}::bigint, ${to}::bigint) as i,
             lateral (select timestamptz '2026-11-01 00:00:00+00' + i * interval '864 milliseconds' + (i % 997) * interval '1 microsecond' as t) times`.execute(database.db);
    }
    await sql`analyze spans`.execute(database.db);
    const { rows: sizes } = await sql<{ bytes: string; avg: string }>`select pg_total_relation_size('spans')::text as bytes, avg(length(attributes::text))::int::text as avg from spans`.execute(database.db);
    log(`generated ${num(options.rows, 0)} spans in ${num((performance.now() - generateStarted) / 1000, 1)} s; table with indexes ${num(Number(sizes[0].bytes) / 2 ** 20, 0)} MiB, attributes ${sizes[0].avg} characters of JSON per row`);

    const env = { ...process.env, DATABASE_URL: database.url, USE_CLICKHOUSE: 'true', CLICKHOUSE_URL: clickhouse.url, LOG_LEVEL: 'warn' };
    const pg = await connectPostgres(parseConfig(env), () => undefined);
    const scope = { entity: 'spans' as const, projectIds: null };

    const { batchRows, batchBytes } = options;
    const reader = new KeysetReader(pg.db, spanHistory);
    /**
     * The read ceiling's page: a keyset SELECT of the columns the row mapper needs, past the cursor as the
     * backfill's reader bounds it, streamed as Postgres prints them (COPY text, jsonb as its text), counted and
     * not parsed: how fast Postgres hands these rows to a client. The keyset's columns come first, so the page's
     * last line gives the next page's cursor.
     */
    const keyColumns = spanHistory.keyset.map((k) => k.column);
    const readColumns = [...keyColumns, ...spanHistory.columns.filter((c) => !keyColumns.includes(c))];
    const keysetPage = async (cursor: string[] | null, limit: number): Promise<{ rows: number; last: string[] | null }> => {
      const statement = sql`copy (select ${sql.join(readColumns.map((c) => sql.ref(c)))} from ${sql.table(spanHistory.table)}
          where ${reader.conditions(scope, cursor, undefined, inlined)}
          order by ${sql.join(keyColumns.map((c) => sql.ref(c)))} limit ${sql.lit(limit)}) to stdout`.compile(pg.db).sql;
      let rows = 0;
      let lastLine: Buffer | null = null;
      // The bytes after the chunk's last newline: the start of a line the next chunk ends.
      let partial = Buffer.alloc(0);
      for await (const chunk of await copyOut(pg.pool, statement)) {
        const bytes = chunk as Buffer;
        // COPY text escapes newlines inside values: every newline ends a row.
        for (let at = bytes.indexOf(10); at !== -1; at = bytes.indexOf(10, at + 1)) rows++;
        const end = bytes.lastIndexOf(10);
        if (end === -1) {
          partial = Buffer.concat([partial, bytes]);
          continue;
        }
        const start = end === 0 ? -1 : bytes.lastIndexOf(10, end - 1);
        lastLine = start === -1 ? Buffer.concat([partial, bytes.subarray(0, end)]) : bytes.subarray(start + 1, end);
        partial = Buffer.from(bytes.subarray(end + 1));
      }
      if (!lastLine) return { rows, last: null };
      // created_at, project_id, trace_id as printed; span_id (bytea) as \\x<hex>, its backslash doubled by COPY.
      const [createdAt, projectId, traceId, spanId] = lastLine.toString('utf8', 0, Math.min(lastLine.length, 512)).split('\t', 4);
      return { rows, last: [createdAt, projectId, traceId, spanId.replace(/^\\\\x/, '')] };
    };

    // The insert ceiling's bodies: the backfill's first batches as it sends them (its bounds, Postgres's
    // COPY of the ClickHouse columns, the jsonb fields made compact), read into memory before any clock starts.
    const ceilingBatches: Buffer[][] = [];
    let ceilingRows = 0;
    let ceilingBytes = 0;
    for (let cursor: string[] | null = null; ceilingRows < options.ceilingRows; ) {
      const end = await reader.bound(scope, cursor, { rows: Math.min(batchRows, options.ceilingRows - ceilingRows), bytes: batchBytes });
      if (!end) break;
      const compacted = new CompactJsonbColumns(spanHistory.copy.columns.length, spanHistory.copy.jsonColumns);
      // A failure on either side destroys the other, and the loop below throws it.
      pipeline(await copyOut(pg.pool, reader.copyStatement(scope, cursor, end).statement), compacted, () => undefined);
      const chunks: Buffer[] = [];
      for await (const chunk of compacted) chunks.push(chunk as Buffer);
      ceilingBatches.push(chunks);
      ceilingRows += compacted.lines;
      ceilingBytes += chunks.reduce((n, c) => n + c.length, 0);
      cursor = end.last;
    }
    const rowBytes = ceilingBytes / ceilingRows;
    log(`TabSeparated rows as the backfill sends them average ${num(rowBytes, 0)} bytes`);
    const ceilingInsert = `INSERT INTO ${spanHistory.table} (${spanHistory.copy.columns.map((c) => `\`${c}\``).join(', ')}) FORMAT TabSeparated`;
    // As ClickHouseHistory decides: bodies are compressed only for a server on another machine.
    const host = new URL(clickhouse.url).hostname;
    const compress = !(host === 'localhost' || host === '[::1]' || host.startsWith('127.'));

    const paths: Record<Path, (round: number) => Promise<Prepared>> = {
      backfill: async (round) => {
        const config = await clickhouse.createDatabase(`backfill_r${round}`);
        const ch = await connectClickHouse(parseConfig({ ...env, CLICKHOUSE_DATABASE: config.database }), () => undefined, 'backfill');
        return {
          run: async () => (await new Backfill(pg, ch.history).run(scope, { batchRows, batchBytes, restart: true })).rowsCopied,
          close: ch.close,
        };
      },
      'postgres read': async () => ({
        run: async () => {
          let read = 0;
          for (let cursor: string[] | null = null; ; ) {
            const page = await keysetPage(cursor, batchRows);
            if (page.rows === 0 || !page.last) return read;
            read += page.rows;
            cursor = page.last;
          }
        },
        close: async () => undefined,
      }),
      'clickhouse insert': async (round) => {
        const config = await clickhouse.createDatabase(`ceiling_r${round}`);
        // As the backfill's client (connectClickHouse): its request timeout, no compression by the client.
        const client = createClient({ ...clickHouseClientOptions(config, clickhouse.url), request_timeout: 120_000, compression: { request: false, response: false } });
        return {
          run: async () => {
            // As the backfill: a batch's insert starts once the one before the last has landed (and the last's rows
            // are sent, which from memory is at once), so at most two are in flight.
            let beforeLast: Promise<void> = Promise.resolve();
            let last: Promise<void> = Promise.resolve();
            for (const body of ceilingBatches) {
              await beforeLast;
              beforeLast = last;
              last = rawInsert(client, ceilingInsert, body, { compress, dedupToken: randomUUID() });
            }
            await Promise.all([beforeLast, last]);
            return ceilingRows;
          },
          close: () => client.close(),
        };
      },
    };

    const runs: Run[] = [];
    for (let round = 0; round < options.rounds; round++) {
      for (const path of rotated(Object.keys(paths) as Path[], round)) {
        const prepared = await paths[path](round);
        let run: Run;
        try {
          const cpu = process.cpuUsage();
          const pgCpu = postgres.pid ? treeCpuSecondsOf(postgres.pid) : 0;
          const chCpu = clickhouse.pid ? cpuSecondsOf(clickhouse.pid) : 0;
          const started = performance.now();
          const rows = await prepared.run();
          const seconds = (performance.now() - started) / 1000;
          const used = process.cpuUsage(cpu);
          run = {
            round,
            path,
            rows,
            seconds,
            rowsPerSecond: rows / seconds,
            cpu: {
              node: (used.user + used.system) / rows,
              postgres: postgres.pid ? ((treeCpuSecondsOf(postgres.pid) - pgCpu) * 1e6) / rows : null,
              clickhouse: clickhouse.pid ? ((cpuSecondsOf(clickhouse.pid) - chCpu) * 1e6) / rows : null,
            },
          };
        } finally {
          await prepared.close();
        }
        runs.push(run);
        const cpuText = `CPU µs/row: node ${num(run.cpu.node, 1)}, postgres ${run.cpu.postgres === null ? '?' : num(run.cpu.postgres, 1)}, clickhouse ${run.cpu.clickhouse === null ? '?' : num(run.cpu.clickhouse, 1)}`;
        log(`round ${round + 1} ${path.padEnd(17)} ${num(run.rows, 0)} rows in ${num(run.seconds, 1)} s = ${num(run.rowsPerSecond, 0)} rows/s; ${cpuText}`);
      }
    }
    await pg.close();

    const of = (path: Path) => runs.filter((r) => r.path === path).sort((a, b) => a.round - b.round);
    const slower = of('backfill').map((_, i) => Math.min(of('postgres read')[i].rowsPerSecond, of('clickhouse insert')[i].rowsPerSecond));
    const ratio = spread(of('backfill').map((b, i) => b.rowsPerSecond / slower[i]));
    const rate = spread(of('backfill').map((b) => b.rowsPerSecond));
    log(`\nrows/s and CPU µs per row, median of rounds (min–max); ${num(options.rows, 0)} spans, ~${num(rowBytes, 0)} bytes per TabSeparated row`);
    log(
      table([
        ['path', 'rows/s', 'node µs/row', 'postgres µs/row', 'clickhouse µs/row'],
        ...(Object.keys(paths) as Path[]).map((path) => [
          path === 'backfill' ? 'backfill' : `${path} (ceiling)`,
          showSpread(spread(of(path).map((r) => r.rowsPerSecond)), 0),
          showSpread(spread(of(path).map((r) => r.cpu.node)), 1),
          postgres.pid ? showSpread(spread(of(path).map((r) => r.cpu.postgres!)), 1) : 'n/a',
          clickhouse.pid ? showSpread(spread(of(path).map((r) => r.cpu.clickhouse!)), 1) : 'n/a',
        ]),
      ]),
    );
    log(`backfill / slower ceiling: ${showSpread(ratio, 3)}`);
    report.goal({ name: 'backfill spans/s', target: '>= 50,000', spread: rate, met: rate.median >= 50_000 });
    report.goal({ name: 'backfill / slower ceiling (Postgres read, ClickHouse insert)', target: '>= 0.50', spread: ratio, met: ratio.median >= 0.5 });
    report.finish({ runs, rowBytes });
  } finally {
    await clickhouse.stop();
    await postgres.stop();
  }
}

runBench(main);
