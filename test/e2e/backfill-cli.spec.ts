import { randomUUID } from 'node:crypto';
import { ChildProcess, spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { sql } from 'kysely';
import { Client } from 'pg';
import { createTestClickHouse, TestClickHouse } from '../support/clickhouse';
import { FakeClickHouse } from '../support/fake-clickhouse';
import { seedNodes, seedSpans } from '../support/history';
import { createTestDatabase, TestDatabase } from '../support/postgres';
import { storesEnv } from '../support/commands';

/**
 * The operator commands as an operator runs them: real processes against
 * per-spec databases, killed, resumed, and checked by `verify`.
 */

const ROOT = resolve(__dirname, '../..');
const PROJECTS = [1, 2, 3, 4, 5].map((n) => `0c000000-0000-4000-8000-00000000000${n}`);
const SPANS = 200_000;
const NODES = 20_000;

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function start(script: 'backfill' | 'verify', args: string[], env: Record<string, string>): { child: ChildProcess; done: Promise<Run>; stderr: () => string } {
  // jest's NODE_OPTIONS (vm modules) is not the commands' business.
  const { NODE_OPTIONS: _jest, ...inherited } = process.env;
  const child = spawn(process.execPath, ['--import', 'tsx', `scripts/${script}.ts`, ...args], { cwd: ROOT, env: { ...inherited, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const done = new Promise<Run>((resolveRun) => child.on('close', (code, signal) => resolveRun({ code, signal, stdout, stderr })));
  return { child, done, stderr: () => stderr };
}

const run = (script: 'backfill' | 'verify', args: string[], env: Record<string, string>) => start(script, args, env).done;

/** Polls until `reached()`; fails with `endedFirst` (and how it ended) if the command ends before. */
async function whileRunning(started: { done: Promise<Run> }, reached: () => boolean | Promise<boolean>, endedFirst: string, pollMs = 50): Promise<void> {
  while (!(await reached())) {
    const exited = await Promise.race([started.done, new Promise((r) => setTimeout(r, pollMs))]);
    if (exited) throw new Error(`${endedFirst}: ${JSON.stringify(exited)}`);
  }
}

interface TerminalRun {
  code: number | null;
  /** Everything the terminal showed, escape sequences included. */
  output: string;
}

/**
 * A command on a terminal of its own (util-linux `script` gives it a pty), as
 * an operator watching its progress bar runs it. Bytes written to `keys` are
 * typed at that terminal, so "\x03" is a real Ctrl-C.
 */
function onTerminal(script: 'backfill' | 'verify', args: string[], env: Record<string, string>) {
  const { NODE_OPTIONS: _jest, ...inherited } = process.env;
  // exec: the shell's pid becomes the command's, for signals sent to it alone.
  const command = `echo pid=$$; exec ${process.execPath} --import tsx scripts/${script}.ts ${args.join(' ')}`;
  const child = spawn('script', ['-qefc', command, '/dev/null'], { cwd: ROOT, env: { ...inherited, ...env } });
  let output = '';
  let ended = false;
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const done = new Promise<TerminalRun>((resolveRun) =>
    child.on('close', (code) => {
      ended = true;
      resolveRun({ code, output });
    }),
  );
  const waitFor = async (pattern: RegExp): Promise<RegExpExecArray> => {
    for (;;) {
      const match = pattern.exec(output);
      if (match) return match;
      if (ended) throw new Error(`the command ended before ${pattern}: ${JSON.stringify(output)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  return { keys: child.stdin!, done, waitFor };
}

/** A progress bar hides the cursor and turns line wrap off; whatever ends the command must turn both back. */
function expectTerminalRestored(output: string): void {
  expect(output).toContain('\x1b[?25l');
  expect(output.slice(output.lastIndexOf('\x1b[?25l'))).toContain('\x1b[?25h');
  expect(output.slice(output.lastIndexOf('\x1b[?7l'))).toContain('\x1b[?7h');
}

describe('npm run backfill / verify', () => {
  let pg: TestDatabase;
  let ch: TestClickHouse;
  let env: Record<string, string>;

  beforeAll(async () => {
    [pg, ch] = await Promise.all([createTestDatabase(), createTestClickHouse()]);
    env = { ...storesEnv(pg, ch), USE_CLICKHOUSE: 'true' };
    await seedSpans(pg.db, { projects: PROJECTS, days: 10, rows: SPANS });
    await seedNodes(pg.db, { projects: PROJECTS, days: 10, rows: NODES });
  }, 120_000);
  afterAll(async () => Promise.all([pg?.drop(), ch?.drop()]));

  const spansCheckpoint = () => pg.db.selectFrom('backfill_checkpoints').selectAll().where('entity', '=', 'spans').executeTakeFirst();
  const count = async (query: string) => Number((await (await ch.clients.query.query({ query, format: 'JSONEachRow' })).json<{ n: string }>())[0].n);

  it('notes that later rows need an API with USE_CLICKHOUSE=true when this shell lacks it, except on a gap replay (about rows already missed)', async () => {
    const flagOff = { ...env, USE_CLICKHOUSE: 'false' };
    const note = 'note: rows written after the backfill copies them reach ClickHouse only through an API running with USE_CLICKHOUSE=true';
    const [copy, gaps] = await Promise.all([run('backfill', ['--entity', 'nodes', '--project', PROJECTS[0]], flagOff), run('backfill', ['--gaps'], flagOff)]);
    expect({ copy: copy.code, gaps: gaps.code }).toEqual({ copy: 0, gaps: 0 });
    expect(copy.stderr).toContain(note);
    expect(gaps.stderr).not.toContain(note);
  }, 60_000);

  // A mistyped --project or date agrees with itself on nothing: exit 0 (both stores agree), with a line that says so.
  it('says when the scope holds nothing, for backfill and verify alike', async () => {
    const nobody = ['--entity', 'nodes', '--project', '0c000000-0000-4000-8000-0000000000ff'];
    const [copy, verified] = [await run('backfill', nobody, env), await run('verify', nobody, env)];
    expect({ copy: copy.code, verified: verified.code }).toEqual({ copy: 0, verified: 0 });
    expect(copy.stdout).toMatch(/^backfill nodes: complete: 0 rows copied .*\. Its scope holds no nodes in Postgres created before that bound: check --project, --since and --until/m);
    expect(verified.stdout).toMatch(/^verify: 0 buckets compared/m);
    expect(verified.stderr).toContain('warning: nothing was compared: neither Postgres nor ClickHouse holds rows in this scope');
    const again = await run('backfill', nobody, env);
    expect(again.stdout).toMatch(/already complete \(0 rows, .*\. It found no nodes in its scope created before \S+: check --project, .*, or --restart for rows created since\./);
    // A scope with rows says nothing of the kind.
    const some = await run('verify', ['--entity', 'nodes', '--project', PROJECTS[0], '--counts-only'], env);
    expect(some.stderr).not.toContain('nothing was compared');
  }, 60_000);

  it('survives SIGKILL half-way: the next run resumes from its checkpoint, and verify finds no difference', async () => {
    const first = start('backfill', ['--entity', 'spans', '--batch-rows', '2000'], env);
    await whileRunning(first, async () => Number((await spansCheckpoint())?.rows_copied ?? 0) >= SPANS / 4, 'backfill ended before it could be killed');
    first.child.kill('SIGKILL');
    expect((await first.done).signal).toBe('SIGKILL');
    const killed = (await spansCheckpoint())!;
    const copiedBefore = Number(killed.rows_copied);
    expect(killed.status).toBe('running');
    expect(copiedBefore).toBeGreaterThanOrEqual(SPANS / 4);
    expect(copiedBefore).toBeLessThan(SPANS);

    const second = await run('backfill', [], env);
    expect(second.code).toBe(0);
    expect(second.stderr).toContain('backfill spans: resumed run "spans project=* since=- until=-" from cursor');
    const spans = /backfill spans: complete: (\d+) rows copied in (\d+) batch(?:es)?, [\d.]+ s, [\d,]+ rows\/s; resumed from (\S+) \(run total (\d+) rows/.exec(second.stdout);
    expect(spans).not.toBeNull();
    expect(Number(spans![1])).toBe(SPANS - copiedBefore);
    expect(spans![3]).toBe((killed.cursor as string[]).join('/'));
    expect(Number(spans![4])).toBe(SPANS);
    expect(second.stdout).toMatch(new RegExp(`backfill nodes: complete: ${NODES} rows copied in \\d+ batch(es)?`));

    const verified = await run('verify', [], env);
    expect(verified.stdout).toContain(`${SPANS + NODES} rows in Postgres, ${SPANS + NODES} in ClickHouse, 0 differ`);
    expect(verified.stdout).toContain('no differences');
    expect(verified.code).toBe(0);

    // No net duplicates: FINAL sees each row once, and so do raw counts once merges have run.
    expect(await count('SELECT count() AS n FROM spans FINAL WHERE is_deleted = 0')).toBe(SPANS);
    await ch.clients.query.command({ query: 'OPTIMIZE TABLE spans FINAL', clickhouse_settings: { wait_end_of_query: 1 } });
    expect(await count('SELECT count() AS n FROM spans')).toBe(SPANS);

    const again = await run('backfill', ['--entity', 'spans'], env);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(new RegExp(`backfill spans: already complete \\(${SPANS} rows, run "spans project=\\* [^"]*"\\); nothing to do. Use --restart to copy again.`));
    expect(again.stderr).not.toContain('already complete'); // said once
    const dryFinished = await run('backfill', ['--dry-run'], env);
    const table = (await (await ch.clients.query.query({ query: "SELECT toString(uuid) AS uuid FROM system.tables WHERE database = currentDatabase() AND name = 'spans'", format: 'JSONEachRow' })).json<{ uuid: string }>())[0].uuid;
    expect(dryFinished.stdout).toContain(
      `dry run: spans: 0 rows would be copied (already-complete; run "spans project=* since=- until=-"; --restart would copy ${SPANS}; ` +
        `as long as ClickHouse's spans table is still ${table}, the one it copied into); nothing written`,
    );
    const dry = await run('backfill', ['--dry-run', '--restart'], env);
    expect(dry.stdout).toContain(`dry run: spans: ${SPANS} rows would be copied (restart;`);
    expect(dry.stdout).toContain(`dry run: nodes: ${NODES} rows would be copied (restart;`);
    expect((await spansCheckpoint())!.status).toBe('complete');
  }, 240_000);

  it('verify exits 1 and names the bucket when ClickHouse lost rows; --repair re-copies it and exits 0', async () => {
    const { rows } = await sql<{ day: string }>`select to_char(min(created_at) at time zone 'UTC', 'YYYY-MM-DD') as day from spans where project_id = ${PROJECTS[2]}`.execute(pg.db);
    const day = rows[0].day;
    await ch.clients.query.command({
      query: 'ALTER TABLE spans DELETE WHERE project_id = {p:UUID} AND toDate(created_at) = {d:Date} AND span_id % 10 = 0',
      query_params: { p: PROJECTS[2], d: day },
      clickhouse_settings: { mutations_sync: '2', wait_end_of_query: 1 },
    });

    const next = new Date(Date.parse(`${day}T00:00:00Z`) + 86_400_000).toISOString().slice(0, 10);
    const scope = ['--entity', 'spans', '--project', PROJECTS[2], '--since', `${day}T00:00:00Z`, '--until', `${next}T00:00:00Z`];
    const found = await run('verify', scope, env);
    expect(found.code).toBe(1);
    expect(found.stdout).toMatch(new RegExp(`entity\\s+project\\s+day\\s+pg rows\\s+ch rows\\s+differs\\nspans\\s+${PROJECTS[2]}\\s+${day}\\s+\\d+\\s+\\d+\\s+rows, versions\\n`));
    expect(found.stdout).toContain('1 differ');
    expect(found.stderr).toContain('error: 1 bucket differs; run with --repair to re-copy them');
    // Counts alone see lost rows too, without hashing any.
    const counted = await run('verify', [...scope, '--counts-only'], env);
    expect(counted.code).toBe(1);
    expect(counted.stdout).toMatch(/verify: 1 bucket compared \(0 by content\), \d+ rows in Postgres, \d+ in ClickHouse, 1 differ/);

    const repaired = await run('verify', [...scope, '--repair'], env);
    expect(repaired.stdout).toMatch(/repair: 1 bucket re-copied in [\d.]+ s: \d+ rows? upserted, 0 tombstoned, 0 reset/);
    expect(repaired.stdout).toMatch(/after repair: verify: 1 bucket compared \(1 by content\), \d+ rows in Postgres, \d+ in ClickHouse, 0 differ, in [\d.]+ s: no differences/);
    expect(repaired.code).toBe(0);
    expect((await run('verify', scope, env)).code).toBe(0);
  }, 120_000);

  it('backfill --gaps --dry-run counts the open gaps in its scope and their rows, and replays nothing', async () => {
    const at = '2026-11-22T10:00:00.000000Z';
    const gap = (entity: string, projectId: string, rowCount: number) => ({
      entity,
      project_id: projectId,
      keys: JSON.stringify(Array.from({ length: rowCount }, (_, i) => [`0c0000000000400080000000000000${10 + i}`])),
      row_count: rowCount,
      min_created_at: at,
      max_created_at: at,
      reason: 'queue full',
    });
    const ids = (
      await pg.db
        .insertInto('mirror_gaps')
        .values([gap('nodes', PROJECTS[0], 3), gap('nodes', PROJECTS[0], 4), gap('nodes', PROJECTS[1], 5), gap('spans', PROJECTS[0], 6)])
        .returning('id')
        .execute()
    ).map((r) => r.id);
    try {
      const [scoped, all] = await Promise.all([
        run('backfill', ['--gaps', '--dry-run', '--entity', 'nodes', '--project', PROJECTS[0]], env),
        run('backfill', ['--gaps', '--dry-run'], env),
      ]);
      expect(scoped).toMatchObject({ code: 0, stdout: 'dry run: 2 open gap records, 7 rows to replay; nothing written\n' });
      expect(all).toMatchObject({ code: 0, stdout: 'dry run: 4 open gap records, 18 rows to replay; nothing written\n' });
      const open = await pg.db.selectFrom('mirror_gaps').select('id').where('id', 'in', ids).where('replayed_at', 'is', null).execute();
      expect(open).toHaveLength(4);
    } finally {
      // Their keys name no row: left open, a later --gaps in this file would replay them as deletes.
      await pg.db.deleteFrom('mirror_gaps').where('id', 'in', ids).execute();
    }
  }, 60_000);

  it('rejects bad options with usage and exit 2, before connecting to anything', async () => {
    const nowhere = { DATABASE_URL: 'postgres://nobody:secret@127.0.0.1:1/none', CLICKHOUSE_URL: 'http://127.0.0.1:1' };
    const cases: Array<[string, string[], string]> = [
      ['backfill', ['--bogus'], 'unknown option "--bogus"'],
      ['backfill', ['--project', 'not-a-uuid'], '--project must be a UUID, got "not-a-uuid"'],
      ['backfill', ['--since', 'yesterday'], '--since must be an ISO-8601 time'],
      ['backfill', ['--since', '2026-02-01T00:00:00Z', '--until', '2026-01-01T00:00:00Z'], '--since (2026-02-01T00:00:00.000000Z) must be earlier than --until'],
      ['backfill', ['--batch-rows', '0'], '--batch-rows must be a positive whole number, got "0"'],
      ['backfill', ['--batch-bytes', '-5'], '--batch-bytes must be a positive whole number'],
      ['backfill', ['--entity', 'traces'], '--entity must be spans, nodes or all, got "traces"'],
      ['backfill', ['--gaps', '--since', '2026-01-01T00:00:00Z'], '--gaps replays whole gap records'],
      ['backfill', ['--gaps', '--batch-rows', '10'], '--gaps replays whole gap records: it takes --entity, --project and --dry-run only'],
      ['backfill', ['--gaps', '--dry-run', '--batch-bytes', '1000'], '--gaps replays whole gap records: it takes --entity, --project and --dry-run only'],
      ['verify', ['--until'], '--until needs a value'],
    ];
    const results = await Promise.all(cases.map(([script, args]) => run(script as 'backfill' | 'verify', args, nowhere)));
    results.forEach((result, i) => {
      expect({ args: cases[i][1], code: result.code }).toEqual({ args: cases[i][1], code: 2 });
      expect(result.stderr).toContain(`error: ${cases[i][2]}`);
      expect(result.stderr).toContain(`usage: npm run ${cases[i][0]} -- [options]`);
    });
  }, 60_000);

  // npm keeps flags given before "--" for itself and passes the command nothing: the --dry-run that was to
  // write nothing copied the whole history, and a --project left out that way widened the scope to everything.
  it('refuses flags npm kept for itself (no "--" before them), naming the fix, before connecting to anything', async () => {
    const nowhere = { DATABASE_URL: 'postgres://nobody:secret@127.0.0.1:1/none', CLICKHOUSE_URL: 'http://127.0.0.1:1' };
    const { NODE_OPTIONS: _jest, ...inherited } = process.env;
    const npmRun = (args: string[]) =>
      new Promise<{ code: number | null; stderr: string }>((resolveRun) => {
        const child = spawn('npm', ['run', '-s', ...args], { cwd: ROOT, env: { ...inherited, ...nowhere } });
        let stderr = '';
        child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
        child.on('close', (code) => resolveRun({ code, stderr }));
      });
    const [dryRun, project] = await Promise.all([
      npmRun(['backfill', '--dry-run']),
      npmRun(['verify', `--project=${randomUUID()}`, '--', '--counts-only']),
    ]);
    expect(dryRun.code).toBe(2);
    expect(dryRun.stderr).toContain('error: npm kept --dry-run for itself: `npm run` passes a command only what follows "--". Run it as `npm run backfill -- <options>`; nothing was done');
    expect(project.code).toBe(2);
    expect(project.stderr).toContain('error: npm kept --project for itself');
    expect(project.stderr).toContain('`npm run verify -- <options>`');
  }, 60_000);

  // After the tests above: ClickHouse holds every row, so verify's content pass (the one with a bar) reads them all.
  it('Ctrl-C or SIGTERM on a terminal stops the bar, restores the terminal, says so on a line of its own, and exits 130 or 143', async () => {
    const backfill = onTerminal('backfill', ['--entity', 'spans', '--restart', '--batch-rows', '2000'], env);
    await backfill.waitFor(/backfill spans \|/);
    backfill.keys.write('\x03');
    const interruptedBackfill = await backfill.done;
    expect(interruptedBackfill.code).toBe(130);
    expectTerminalRestored(interruptedBackfill.output);
    expect(interruptedBackfill.output).toMatch(/\n(\r\x1b\[2K)?interrupted: every batch ClickHouse accepted is checkpointed; run it again without --restart to resume\r\n$/);

    const verify = onTerminal('verify', ['--entity', 'spans'], env);
    const pid = Number((await verify.waitFor(/pid=(\d+)/))[1]);
    await verify.waitFor(/verify spans \|/);
    process.kill(pid, 'SIGTERM');
    const terminated = await verify.done;
    expect(terminated.code).toBe(143);
    expectTerminalRestored(terminated.output);
    expect(terminated.output).toMatch(/\n(\r\x1b\[2K)?interrupted: verify did not finish; run the same command again \(a --repair cut short is safe to repeat\)\r\n$/);
  }, 120_000);

  it('without a terminal, SIGINT exits 130 and SIGTERM 143, each with its interrupted line', async () => {
    for (const [script, signal, code, line] of [
      ['verify', 'SIGINT', 130, 'interrupted: verify did not finish; run the same command again (a --repair cut short is safe to repeat)'],
      ['backfill', 'SIGTERM', 143, 'interrupted: every batch ClickHouse accepted is checkpointed; run it again without --restart to resume'],
    ] as const) {
      // The backfill restarts every entity: cut short in spans, it must resume nodes too (below).
      const started = start(script, script === 'verify' ? ['--entity', 'spans'] : ['--restart', '--batch-rows', '2000'], env);
      // Under way: verify's line-per-5-s progress, or the backfill's first checkpoint (soon, and little for ClickHouse to merge and drop).
      const underWay = async () =>
        script === 'verify' ? started.stderr().includes('verify progress') : Number((await spansCheckpoint())?.rows_copied ?? 0) > 0;
      await whileRunning(started, underWay, `${script} ended before it could be interrupted`);
      started.child.kill(signal);
      const result = await started.done;
      expect({ script, code: result.code }).toEqual({ script, code });
      expect(result.stderr).toMatch(new RegExp(`(^|\\n)${line.replace(/[()]/g, '\\$&')}\\n$`));
    }
    // As the line says, without --restart: spans resume, and nodes, which the cut came before, are copied again
    // (before every entity was started over first, nodes read "already complete" from the earlier run).
    const resumed = await run('backfill', [], env);
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toMatch(/^backfill spans: complete: \d+ rows? copied .*; resumed from /m);
    expect(resumed.stdout).toMatch(new RegExp(`^backfill nodes: complete: ${NODES} rows copied .*\\(run total ${NODES} rows,`, 'm'));
  }, 120_000);

  it('names the server and what to do when ClickHouse stops answering part-way through verify', async () => {
    const proxy = await FakeClickHouse.start(ch.url);
    try {
      const verify = start('verify', ['--entity', 'spans'], { ...env, CLICKHOUSE_URL: proxy.url });
      await whileRunning(verify, () => verify.stderr().includes('verify progress'), 'verify ended before ClickHouse could stop');
      await proxy.setMode('refuse');
      const result = await verify.done;
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(
        new RegExp(`\\nerror: ClickHouse at ${proxy.url} stopped answering during verify: [^\\n]+; run it again once it is back\\n$`),
      );
    } finally {
      await proxy.close();
    }
  }, 60_000);

  it('names the server and what to do when Postgres fails part-way through verify', async () => {
    // A project ClickHouse lacks: verify finds it differing and waits to compare it again, and Postgres fails then.
    const project = randomUUID();
    await seedSpans(pg.db, { projects: [project], days: 1, rows: 100 });
    const admin = new Client({ connectionString: process.env.TEST_PG_ADMIN_URL });
    await admin.connect();
    let result: Run;
    try {
      const verify = start('verify', ['--entity', 'spans', '--project', project], env);
      await whileRunning(verify, () => verify.stderr().includes('comparing them again'), 'verify ended before Postgres could fail');
      // Every session of the command's database ends, and no new one is let in (a failover in progress, say):
      // the pool's fresh connections for the second comparison fail.
      await admin.query(`alter database ${pg.name} allow_connections false`);
      await admin.query('select pg_terminate_backend(pid) from pg_stat_activity where datname = $1', [pg.name]);
      result = await verify.done;
    } finally {
      await admin.query(`alter database ${pg.name} allow_connections true`);
      await admin.end();
      await pg.db.deleteFrom('spans').where('project_id', '=', project).execute();
    }
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(
      new RegExp(`\\nerror: Postgres at postgres://[^\\n]*/${pg.name} failed: [^\\n]+; run the same command again once it answers \\(a --repair cut short is safe to repeat\\)\\n$`),
    );
  }, 60_000);

  it('after a failure part-way through a --restart run, says to resume without --restart, and that resumes', async () => {
    const proxy = await FakeClickHouse.start(ch.url);
    try {
      const backfill = start('backfill', ['--entity', 'spans', '--restart', '--batch-rows', '2000'], { ...env, CLICKHOUSE_URL: proxy.url });
      await whileRunning(backfill, () => proxy.stats().inserts >= 3, 'backfill ended before ClickHouse could stop', 20);
      await proxy.setMode('refuse');
      const result = await backfill.done;
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(
        /\nerror: ClickHouse at [^\n]+ stopped answering [^\n]+; run it again once it is back \(to resume, run the command without --restart: with it, the run starts over\)\n$/,
      );
    } finally {
      await proxy.close();
    }
    const resumed = await run('backfill', ['--entity', 'spans', '--batch-rows', '2000'], env);
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toMatch(new RegExp(`^backfill spans: complete: \\d+ rows? copied .*; resumed from .*\\(run total ${SPANS} rows,`, 'm'));
  }, 120_000);

  it('takes credentials written into CLICKHOUSE_URL without the client warning about them', async () => {
    const url = new URL(ch.url);
    url.username = ch.config.user;
    url.password = ch.config.password;
    const { CLICKHOUSE_USER: _user, CLICKHOUSE_PASSWORD: _password, ...rest } = env;
    const verified = await run('verify', ['--counts-only', '--entity', 'nodes'], { ...rest, CLICKHOUSE_URL: url.toString() });
    expect(verified.stderr).not.toContain('@clickhouse/client');
    expect(verified.code).toBe(0);
  }, 60_000);

  it('says which server is unreachable (without its password) or that the tables are missing, and exits 1', async () => {
    const [postgresDown, clickhouseDown, noTables, verifyNoTables] = await Promise.all([
      run('backfill', [], { ...env, DATABASE_URL: 'postgres://nobody:secret@127.0.0.1:1/none' }),
      run('backfill', [], { ...env, CLICKHOUSE_URL: 'http://127.0.0.1:1' }),
      run('backfill', [], { ...env, CLICKHOUSE_DATABASE: 'never_migrated' }),
      run('verify', [], { ...env, CLICKHOUSE_DATABASE: 'never_migrated' }),
    ]);
    expect(postgresDown.code).toBe(1);
    expect(postgresDown.stderr).toContain('error: cannot use Postgres at postgres://nobody:***@127.0.0.1:1/none: connect ECONNREFUSED 127.0.0.1:1');
    expect(postgresDown.stderr).not.toContain('secret');
    expect(clickhouseDown.code).toBe(1);
    expect(clickhouseDown.stderr).toContain('error: ClickHouse at http://127.0.0.1:1 does not answer');
    for (const result of [noTables, verifyNoTables]) {
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/error: ClickHouse at \S+ .*never_migrated.*: run `npm run migrate:clickhouse`/);
    }
  }, 60_000);
});
