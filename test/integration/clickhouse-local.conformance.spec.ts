import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { ClickHouseError, ClickHouseLogLevel, createClient as createClickHouseClient, type ClickHouseClient } from '@clickhouse/client';
import { clickHouseAnswers, startLocalClickHouse, type ResolvedClickHouse } from '../../src/dbs/clickhouse/local-clickhouse';
import { freePort } from '../../scripts/cli/free-port';

/**
 * The local ClickHouse endpoint (chdb behind scripts/clickhouse-local), driven
 * only through @clickhouse/client, the way the app, scripts and tests use it.
 * The server runs as a child process, as it does in production.
 */

jest.setTimeout(120_000);

const DB = 'conformance';

// Expected errors are asserted on; the client would also log each one.
const createClient = (config: Parameters<typeof createClickHouseClient>[0]) => createClickHouseClient({ ...config, log: { level: ClickHouseLogLevel.OFF } });

async function expectClickHouseError(work: Promise<unknown>, code: string, type: string): Promise<ClickHouseError> {
  const error = await work.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ClickHouseError);
  expect(error).toMatchObject({ code, type });
  return error as ClickHouseError;
}


async function until(condition: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await condition()) return true;
    await new Promise((done) => setTimeout(done, 200));
  }
  return false;
}

describe('local ClickHouse endpoint through @clickhouse/client', () => {
  let dataDir: string;
  let server: ResolvedClickHouse;
  let compressed: ClickHouseClient;
  let plain: ClickHouseClient;

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'tracing-test-ch-'));
    server = await startLocalClickHouse({ port: 0, dataDir });
    compressed = createClient({ url: server.url, compression: { request: true, response: true } });
    plain = createClient({ url: server.url, compression: { request: false, response: false } });
    await plain.command({ query: `CREATE DATABASE ${DB}`, clickhouse_settings: { wait_end_of_query: 1 } });
  });

  afterAll(async () => {
    await compressed?.close();
    await plain?.close();
    await server?.stop?.();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it('answers ping, both on /ping and as a SELECT', async () => {
    expect(server.stop).toBeDefined();
    for (const client of [plain, compressed]) {
      expect(await client.ping()).toEqual({ success: true });
      expect(await client.ping({ select: true })).toEqual({ success: true });
    }
  });

  it('runs DDL for MergeTree and ReplacingMergeTree tables', async () => {
    const ddl = { wait_end_of_query: 1 } as const;
    await compressed.command({
      query: `
        CREATE TABLE ${DB}.spans (
          project_id UUID,
          trace_id FixedString(16),
          span_id UInt64,
          span_name String,
          start_time DateTime64(6, 'UTC'),
          tags Array(String),
          version UInt64,
          is_deleted UInt8
        ) ENGINE = ReplacingMergeTree(version, is_deleted)
        ORDER BY (project_id, trace_id, span_id)`,
      clickhouse_settings: ddl,
    });
    await plain.command({
      query: `CREATE TABLE ${DB}.events (id UInt64, name String, at DateTime64(6, 'UTC')) ENGINE = MergeTree ORDER BY id`,
      clickhouse_settings: ddl,
    });
    await plain.command({
      query: `CREATE TABLE ${DB}.batches (id UInt64, note String) ENGINE = MergeTree ORDER BY id
              SETTINGS non_replicated_deduplication_window = 100`,
      clickhouse_settings: ddl,
    });
    const tables = await plain.query({
      query: 'SELECT name, engine FROM system.tables WHERE database = {db:String} ORDER BY name',
      query_params: { db: DB },
      format: 'JSONEachRow',
    });
    expect(await tables.json()).toEqual([
      { name: 'batches', engine: 'MergeTree' },
      { name: 'events', engine: 'MergeTree' },
      { name: 'spans', engine: 'ReplacingMergeTree' },
    ]);
    // Creating it again must fail: the statement ran exactly once.
    await expectClickHouseError(plain.command({ query: `CREATE TABLE ${DB}.events (id UInt64) ENGINE = MergeTree ORDER BY id` }), '57', 'TABLE_ALREADY_EXISTS');
  });

  it('inserts 100k JSONEachRow rows in one gzip request', async () => {
    const rows = Array.from({ length: 100_000 }, (_, i) => ({
      id: i,
      name: `event-${i}-${'x'.repeat(32)}`,
      at: `2026-01-01 00:00:00.${String(i % 1_000_000).padStart(6, '0')}`,
    }));
    const result = await compressed.insert({ table: `${DB}.events`, values: rows, format: 'JSONEachRow' });
    expect(result.executed).toBe(true);
    expect(result.summary?.written_rows).toBe('100000');

    const counted = await plain.query({ query: `SELECT count() AS n, sum(id) AS total, max(at) AS last FROM ${DB}.events`, format: 'JSONEachRow' });
    expect(await counted.json()).toEqual([{ n: 100_000, total: (99_999 * 100_000) / 2, last: '2026-01-01 00:00:00.099999' }]);
  });

  it('binds query parameters of several types and reads with FINAL', async () => {
    const project = '0b6c6a3e-7f1d-4c55-9a0e-2f8f3b1c2d4e';
    const other = 'f0e1d2c3-b4a5-4678-9abc-def012345678';
    const name = `it's a "span"\twith\\backslash\nand newline`;
    const tags = [`quote'd`, 'back\\slash', 'tab\there', 'plain'];
    const row = (version: number, extra: object = {}) => ({
      project_id: project,
      trace_id: 'abcdefghijklmnop',
      span_id: '18446744073709551615',
      span_name: name,
      start_time: '2026-03-04 05:06:07.000001',
      tags,
      version,
      is_deleted: 0,
      ...extra,
    });
    // One insert per version, so the versions sit in separate parts until FINAL merges them.
    const versions = [row(1, { span_name: 'old name' }), row(2), { ...row(1), project_id: other, span_id: '7' }, { ...row(2), project_id: other, span_id: '7', is_deleted: 1 }];
    for (const version of versions) await compressed.insert({ table: `${DB}.spans`, values: [version], format: 'JSONEachRow' });

    const result = await plain.query({
      query: `
        SELECT span_name, span_id, start_time, tags, version
        FROM ${DB}.spans FINAL
        WHERE project_id = {project:UUID}
          AND span_id = {span:UInt64}
          AND span_name = {name:String}
          AND start_time >= {since:DateTime64(6, 'UTC')}
          AND hasAll(tags, {tags:Array(String)})`,
      query_params: { project, span: '18446744073709551615', name, since: '2026-03-04 05:06:07.000001', tags },
      format: 'JSONEachRow',
      // 26.x writes 64-bit integers as JSON numbers unless asked to quote them.
      clickhouse_settings: { output_format_json_quote_64bit_integers: 1 },
    });
    expect(await result.json()).toEqual([{ span_name: name, span_id: '18446744073709551615', start_time: '2026-03-04 05:06:07.000001', tags, version: '2' }]);

    // FINAL keeps the newest version per key and drops tombstoned keys.
    const final = await plain.query({ query: `SELECT project_id, span_name FROM ${DB}.spans FINAL ORDER BY project_id`, format: 'JSONEachRow' });
    expect(await final.json()).toEqual([{ project_id: project, span_name: name }]);
    const raw = await plain.query({ query: `SELECT count() AS n FROM ${DB}.spans`, format: 'JSONEachRow' });
    expect(await raw.json()).toEqual([{ n: 4 }]);
  });

  it('takes query parameters as long as a 1000-key lookup binds (a URL far past 16 KiB)', async () => {
    // backfill --gaps and verify --repair read a gap's spans 1000 keys at a time, their ids bound in the
    // URL (~75 KiB); ClickHouse takes a URI up to http_max_uri_size, 1 MiB by default.
    const traceIds = Array.from({ length: 1000 }, (_, i) => `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`);
    const spanIds = Array.from({ length: 1000 }, (_, i) => 18446744073709551615n - BigInt(i));
    const result = await plain.query({
      query: 'SELECT length({traceIds:Array(UUID)}) AS traces, length({spanIds:Array(UInt64)}) AS spans',
      query_params: { traceIds, spanIds },
      format: 'JSONEachRow',
    });
    expect(await result.json()).toEqual([{ traces: 1000, spans: 1000 }]);
  });

  it('round-trips DateTime64(6) microseconds exactly', async () => {
    const values = ['2026-01-02 03:04:05.000007', '1999-12-31 23:59:59.999999', '2026-06-30 12:00:00.123456'];
    await plain.insert({ table: `${DB}.events`, values: values.map((at, i) => ({ id: 1_000_000 + i, name: 'micro', at })), format: 'JSONEachRow' });
    const back = await compressed.query({
      query: `SELECT at, toUnixTimestamp64Micro(at) AS micros FROM ${DB}.events WHERE name = 'micro' ORDER BY id`,
      format: 'JSONEachRow',
    });
    const rows = await back.json<{ at: string; micros: number }>();
    expect(rows.map((r) => r.at)).toEqual(values);
    expect(rows.map((r) => String(r.micros))).toEqual(values.map((v) => String(BigInt(Date.parse(`${v.slice(0, 19)}Z`)) * 1000n + BigInt(v.slice(20)))));
    const bound = await plain.query({
      query: `SELECT count() AS n FROM ${DB}.events WHERE at = {at:DateTime64(6, 'UTC')}`,
      query_params: { at: values[0] },
      format: 'JSONEachRow',
    });
    expect(await bound.json()).toEqual([{ n: 1 }]);
  });

  it('returns rows with JSONEachRow .json() and .stream(), compressed or not', async () => {
    for (const client of [plain, compressed]) {
      const firstTen = await client.query({ query: `SELECT id, name FROM ${DB}.events WHERE id < 10 ORDER BY id`, format: 'JSONEachRow' });
      expect((await firstTen.json<{ id: number }>()).map((r) => r.id)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);

      const all = await client.query({ query: `SELECT id FROM ${DB}.events WHERE id < 100000 ORDER BY id`, format: 'JSONEachRow' });
      let count = 0;
      let outOfOrder = 0;
      for await (const rows of all.stream<{ id: number }>()) {
        for (const row of rows) if (row.json().id !== count++) outOfOrder++;
      }
      expect({ count, outOfOrder }).toEqual({ count: 100_000, outOfOrder: 0 });
    }
  });

  it('returns the JSON format with meta and row count', async () => {
    const result = await compressed.query({ query: 'SELECT number AS n, toString(number) AS s FROM numbers(3)', format: 'JSON' });
    const json = await result.json<{ n: number; s: string }>();
    expect(json.meta).toEqual([
      { name: 'n', type: 'UInt64' },
      { name: 's', type: 'String' },
    ]);
    expect(json.data).toEqual([
      { n: 0, s: '0' },
      { n: 1, s: '1' },
      { n: 2, s: '2' },
    ]);
    expect(json.rows).toBe(3);

    const withProgress = await plain.query({ query: 'SELECT number AS n FROM numbers(2)', format: 'JSONEachRowWithProgress' });
    const rows: unknown[] = [];
    for await (const batch of withProgress.stream()) for (const row of batch) rows.push(row.json());
    expect(rows.filter((r) => typeof r === 'object' && r !== null && 'row' in r)).toEqual([{ row: { n: 0 } }, { row: { n: 1 } }]);
  });

  it('keeps answering while a slow query runs', async () => {
    const finished: string[] = [];
    // sleep()'s longest (3 s), so the ping and the query have room on a busy machine.
    const slow = plain.command({ query: 'SELECT sleep(3)' }).then(() => finished.push('slow'));
    // Until the server runs it, not a set time: a ping that beat the query there would prove nothing.
    const sleeping = async () =>
      Number((await (await compressed.query({ query: "SELECT count() AS n FROM system.processes WHERE query LIKE '%sleep(3)%' AND query NOT LIKE '%system.processes%'", format: 'JSONEachRow' })).json<{ n: string }>())[0]?.n) === 1;
    expect(await until(sleeping, 10_000)).toBe(true);
    await compressed.ping().then(() => finished.push('ping'));
    await compressed.query({ query: 'SELECT 1', format: 'JSONEachRow' }).then(async (r) => finished.push(`query ${JSON.stringify(await r.json())}`));
    await slow;
    expect(finished).toEqual(['ping', 'query [{"1":1}]', 'slow']);
  });

  it('runs command and exec, echoing the query id', async () => {
    const command = await plain.command({ query: `ALTER TABLE ${DB}.events DELETE WHERE name = 'nothing-matches'`, query_id: 'conformance-command-1' });
    expect(command.query_id).toBe('conformance-command-1');
    expect(command.response_headers['x-clickhouse-query-id']).toBe('conformance-command-1');

    for (const client of [plain, compressed]) {
      const exec = await client.exec({ query: 'SELECT 40 + 2 AS answer FORMAT TabSeparatedWithNames' });
      const text = await new Promise<string>((done, fail) => {
        let out = '';
        exec.stream.on('data', (chunk: Buffer) => (out += chunk.toString()));
        exec.stream.on('end', () => done(out));
        exec.stream.on('error', fail);
      });
      expect(text).toBe('answer\n42\n');
    }

    const lines = Readable.from(['{"id":2000000,"name":"from exec","at":"2026-01-01 00:00:00.5"}\n', '{"id":2000001,"name":"from exec","at":"2026-01-01 00:00:00.25"}\n']);
    const inserted = await compressed.exec({ query: `INSERT INTO ${DB}.events FORMAT JSONEachRow`, values: lines });
    inserted.stream.resume();
    expect(inserted.summary?.written_rows).toBe('2');
    const check = await plain.query({ query: `SELECT at FROM ${DB}.events WHERE name = 'from exec' ORDER BY id`, format: 'JSONEachRow' });
    expect(await check.json()).toEqual([{ at: '2026-01-01 00:00:00.500000' }, { at: '2026-01-01 00:00:00.250000' }]);
  });

  it('deduplicates a repeated insert with the same insert_deduplication_token', async () => {
    const count = async () => (await (await plain.query({ query: `SELECT count() AS n, sum(id) AS s FROM ${DB}.batches`, format: 'JSONEachRow' })).json())[0];
    const batch = (from: number) => Array.from({ length: 50 }, (_, i) => ({ id: from + i, note: `row ${from + i}` }));

    await compressed.insert({ table: `${DB}.batches`, values: batch(0), format: 'JSONEachRow', clickhouse_settings: { insert_deduplication_token: 'batch-1' } });
    expect(await count()).toEqual({ n: 50, s: 1225 });
    // The same token is the same batch, whatever the rows: a retried flush must not duplicate.
    await compressed.insert({ table: `${DB}.batches`, values: batch(0), format: 'JSONEachRow', clickhouse_settings: { insert_deduplication_token: 'batch-1' } });
    await plain.insert({ table: `${DB}.batches`, values: batch(100), format: 'JSONEachRow', clickhouse_settings: { insert_deduplication_token: 'batch-1' } });
    expect(await count()).toEqual({ n: 50, s: 1225 });
    await plain.insert({ table: `${DB}.batches`, values: batch(100), format: 'JSONEachRow', clickhouse_settings: { insert_deduplication_token: 'batch-2' } });
    expect(await count()).toEqual({ n: 100, s: 1225 + 6225 });
  });

  it('raises ClickHouseError with the engine code and type', async () => {
    for (const client of [plain, compressed]) {
      const unknown = await expectClickHouseError(client.query({ query: `SELECT * FROM ${DB}.no_such_table`, format: 'JSONEachRow' }), '60', 'UNKNOWN_TABLE');
      expect(unknown.message).toContain('no_such_table');
      await expectClickHouseError(client.query({ query: 'SELEC 1', format: 'JSONEachRow' }), '62', 'SYNTAX_ERROR');
      await expectClickHouseError(client.command({ query: 'SELECT 1; SELECT 2' }), '62', 'SYNTAX_ERROR');
      await expectClickHouseError(client.query({ query: "SELECT 1 + 'a' AS x", format: 'JSONEachRow' }), '43', 'ILLEGAL_TYPE_OF_ARGUMENT');
      await expectClickHouseError(
        client.query({ query: 'SELECT {n:UInt64} AS n', query_params: { n: 'not a number' }, format: 'JSONEachRow' }),
        '457',
        'BAD_QUERY_PARAMETER',
      );
      await expectClickHouseError(
        client.insert({ table: `${DB}.events`, values: [{ id: 'abc', name: 'bad', at: '2026-01-01 00:00:00' }], format: 'JSONEachRow' }),
        '27',
        'CANNOT_PARSE_INPUT_ASSERTION_FAILED',
      );
      await expectClickHouseError(client.command({ query: 'SELECT 1', clickhouse_settings: { no_such_setting: 1 } as never }), '115', 'UNKNOWN_SETTING');
    }
  });

  it('reports an error raised after the result started streaming', async () => {
    for (const client of [plain, compressed]) {
      const result = await client.query({ query: "SELECT throwIf(number = 300000, 'boom at 300000') AS x FROM numbers(400000)", format: 'JSONEachRow' });
      let rows = 0;
      const failure = await (async () => {
        for await (const batch of result.stream()) rows += batch.length;
      })().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(rows).toBeGreaterThan(0);
      expect(failure).toBeInstanceOf(ClickHouseError);
      expect(failure).toMatchObject({ code: '395', type: 'FUNCTION_THROW_IF_VALUE_IS_NON_ZERO' });
    }
  });

  it('applies settings per request without leaking them into the next', async () => {
    const read = async (settings: Record<string, 0 | 1> | undefined) =>
      (await (await plain.query({ query: 'SELECT toUInt64(7) AS n', format: 'JSONEachRow', clickhouse_settings: settings })).json())[0];
    expect(await read({ output_format_json_quote_64bit_integers: 1 })).toEqual({ n: '7' });
    expect(await read({ output_format_json_quote_64bit_integers: 0 })).toEqual({ n: 7 });
    const setting = await plain.query({ query: "SELECT getSetting('max_threads') AS t", format: 'JSONEachRow', clickhouse_settings: { max_threads: 1 } });
    expect(await setting.json()).toEqual([{ t: 1 }]);
    const fresh = await plain.query({ query: "SELECT changed FROM system.settings WHERE name = 'max_threads'", format: 'JSONEachRow' });
    expect(await fresh.json()).toEqual([{ changed: 0 }]);
  });

  it('uses the client database as the default database', async () => {
    const scoped = createClient({ url: server.url, database: DB });
    const missing = createClient({ url: server.url, database: 'no_such_db' });
    try {
      const result = await scoped.query({ query: "SELECT currentDatabase() AS db, count() AS n FROM batches", format: 'JSONEachRow' });
      expect(await result.json()).toEqual([{ db: DB, n: 100 }]);
      await scoped.insert({ table: 'batches', values: [{ id: 999, note: 'scoped' }], format: 'JSONEachRow' });
      const back = await plain.query({ query: `SELECT note FROM ${DB}.batches WHERE id = 999`, format: 'JSONEachRow' });
      expect(await back.json()).toEqual([{ note: 'scoped' }]);
      await expectClickHouseError(missing.query({ query: 'SELECT 1' }), '81', 'UNKNOWN_DATABASE');
    } finally {
      await scoped.close();
      await missing.close();
    }
  });

  it('keeps a session (temporary tables) across requests with the same session_id', async () => {
    const session = createClient({ url: server.url, session_id: `conformance-${Date.now()}` });
    try {
      await session.command({ query: 'CREATE TEMPORARY TABLE keys (k String)' });
      await session.insert({ table: 'keys', values: [{ k: 'a' }, { k: 'b' }], format: 'JSONEachRow' });
      const result = await session.query({ query: 'SELECT groupArray(k) AS ks FROM (SELECT k FROM keys ORDER BY k)', format: 'JSONEachRow' });
      expect(await result.json()).toEqual([{ ks: ['a', 'b'] }]);
      await expectClickHouseError(plain.query({ query: 'SELECT * FROM keys' }), '60', 'UNKNOWN_TABLE');
    } finally {
      await session.close();
    }
  });

  it('refuses a session timeout past max_session_timeout (3600 s), as ClickHouse does', async () => {
    const session = createClient({ url: server.url, session_id: `conformance-long-${Date.now()}` });
    try {
      await expectClickHouseError(session.command({ query: 'SELECT 1', clickhouse_settings: { session_timeout: '3601' } }), '374', 'INVALID_SESSION_TIMEOUT');
      await session.command({ query: 'SELECT 1', clickhouse_settings: { session_timeout: '3600' } });
    } finally {
      await session.close();
    }
  });

  it('takes query parameters from a multipart body', async () => {
    const multipart = createClient({ url: server.url, use_multipart_params: true });
    try {
      const names = Array.from({ length: 2_000 }, (_, i) => `name-${i}-'quoted'`);
      const result = await multipart.query({
        query: 'SELECT length({names:Array(String)}) AS n, {names:Array(String)}[2000] AS last',
        query_params: { names },
        format: 'JSONEachRow',
      });
      expect(await result.json()).toEqual([{ n: 2_000, last: names[1_999] }]);
    } finally {
      await multipart.close();
    }
  });

  it('serves concurrent requests with the right parameters each', async () => {
    const results = await Promise.all(
      Array.from({ length: 24 }, async (_, i) => {
        const client = i % 2 ? plain : compressed;
        const result = await client.query({ query: 'SELECT {i:UInt32} * 2 AS doubled, {s:String} AS s', query_params: { i, s: `s-${i}` }, format: 'JSONEachRow' });
        return (await result.json())[0];
      }),
    );
    expect(results).toEqual(Array.from({ length: 24 }, (_, i) => ({ doubled: i * 2, s: `s-${i}` })));
  });

  it('streams a 50+ MB insert body', async () => {
    await plain.command({ query: `CREATE TABLE ${DB}.bulk (id UInt64, payload String) ENGINE = MergeTree ORDER BY id` });
    const rows = 400_000;
    const filler = 'p'.repeat(120);
    let sent = 0;
    const values = Readable.from(
      (function* () {
        for (let from = 0; from < rows; from += 10_000) {
          let chunk = '';
          for (let id = from; id < from + 10_000; id++) chunk += `{"id":${id},"payload":"${filler}"}\n`;
          sent += chunk.length;
          yield chunk;
        }
      })(),
    );
    const result = await plain.exec({ query: `INSERT INTO ${DB}.bulk FORMAT JSONEachRow`, values });
    result.stream.resume();
    expect(sent).toBeGreaterThan(50 * 1024 * 1024);
    expect(result.summary?.written_rows).toBe(String(rows));
    const check = await compressed.query({ query: `SELECT count() AS n, uniqExact(id) AS u FROM ${DB}.bulk`, format: 'JSONEachRow' });
    expect(await check.json()).toEqual([{ n: rows, u: rows }]);
  });
});

describe('local ClickHouse server resolver', () => {
  it('uses a server that already answers, and only one wins a race to start', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'tracing-test-ch-race-'));
    const port = await freePort();
    const started = await Promise.all([startLocalClickHouse({ port, dataDir }), startLocalClickHouse({ port, dataDir })]);
    try {
      expect(started.map((s) => s.url)).toEqual([`http://127.0.0.1:${port}`, `http://127.0.0.1:${port}`]);
      expect(started.filter((s) => s.stop !== undefined)).toHaveLength(1);
      // A joiner in the process that started the server does not keep its stop() from stopping it.
      const again = await startLocalClickHouse({ port, dataDir });
      expect(again).toEqual({ url: `http://127.0.0.1:${port}`, release: expect.any(Function) });
      const client = createClient({ url: again.url });
      expect(await client.ping()).toEqual({ success: true });
      await client.close();
    } finally {
      await Promise.all(started.map((s) => s.stop?.()));
      await rm(dataDir, { recursive: true, force: true });
    }
    expect(await clickHouseAnswers(`http://127.0.0.1:${port}`)).toBe(false);
  });

  /** A process of its own that resolves the local server on `port` (0: starts one) and runs until killed. */
  async function resolverProcess(port: number, dataDir: string): Promise<{ process: ChildProcess; url: string; started: boolean }> {
    const resolver = resolve(__dirname, '../../src/dbs/clickhouse/local-clickhouse.ts');
    const code = `require(${JSON.stringify(resolver)}).startLocalClickHouse({ port: ${port}, dataDir: ${JSON.stringify(dataDir)} })
      .then((s) => { console.log('URL ' + s.url + ' ' + (s.stop ? 'started' : 'joined')); setInterval(() => undefined, 1000); })`;
    const child = spawn(process.execPath, ['--import', pathToFileURL(require.resolve('tsx')).href, '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      return await new Promise((done, fail) => {
        let out = '';
        child.stdout!.on('data', (chunk: Buffer) => {
          out += chunk.toString();
          const match = /URL (\S+) (\w+)/.exec(out);
          if (match) done({ process: child, url: match[1], started: match[2] === 'started' });
        });
        child.once('exit', (exitCode) => fail(new Error(`resolver process exited early (${exitCode})`)));
      });
    } catch (error) {
      child.kill('SIGKILL');
      throw error;
    }
  }

  it('stops the server when the process that started it dies', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'tracing-test-ch-orphan-'));
    const parent = await resolverProcess(0, dataDir);
    try {
      expect(await clickHouseAnswers(parent.url)).toBe(true);
      parent.process.kill('SIGKILL');
      expect(await until(async () => !(await clickHouseAnswers(parent.url, 500)), 15_000)).toBe(true);
    } finally {
      parent.process.kill('SIGKILL');
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  // A backfill starts the server and an API joins it; the backfill ending must not take ClickHouse from the API.
  it('outlives the process that started it while one that joined it runs, and stops once that one lets go', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'tracing-test-ch-joined-'));
    const port = await freePort();
    const starter = await resolverProcess(port, dataDir);
    try {
      expect(starter.started).toBe(true);
      const joiner = await startLocalClickHouse({ port, dataDir });
      expect(joiner).toEqual({ url: starter.url, release: expect.any(Function) });
      starter.process.kill('SIGKILL');
      await new Promise((done) => setTimeout(done, 3_000));
      const client = createClient({ url: joiner.url });
      expect(await client.query({ query: 'SELECT 1 AS one', format: 'JSONEachRow' }).then((r) => r.json())).toEqual([{ one: 1 }]);
      await client.close();
      joiner.release!();
      expect(await until(async () => !(await clickHouseAnswers(starter.url, 500)), 15_000)).toBe(true);
    } finally {
      starter.process.kill('SIGKILL');
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it("is left running by its starter's stop() while another process uses it, and stops when that process dies", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'tracing-test-ch-left-'));
    const port = await freePort();
    const logs: string[] = [];
    const starter = await startLocalClickHouse({ port, dataDir, log: (line) => logs.push(line) });
    const joiner = await resolverProcess(port, dataDir);
    try {
      expect(joiner.started).toBe(false);
      await starter.stop!();
      expect(logs).toContain(`local ClickHouse left running on ${starter.url}: process ${joiner.process.pid} uses it; it stops once it has ended`);
      expect(await clickHouseAnswers(starter.url)).toBe(true);
      joiner.process.kill('SIGKILL');
      expect(await until(async () => !(await clickHouseAnswers(starter.url, 500)), 15_000)).toBe(true);
    } finally {
      joiner.process.kill('SIGKILL');
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
