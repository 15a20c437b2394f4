import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readdir, rm } from 'node:fs/promises';
import { createServer as createHttpServer } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCommand, type CommandRun } from '../support/commands';
import { eventually } from '../support/fake-clickhouse';
import { freePort } from '../../scripts/cli/free-port';
import { stopPostmasterOf } from '../support/postgres-process';

/**
 * Two operators' commands started at the same moment on the same embedded
 * servers (the same data directory and ports): both succeed, one starting a
 * server and the other joining it, or each in turn when the first is quick
 * enough to have stopped it again; then the servers stop. Before, the second
 * failed: initdb into a directory the first was filling ("exists but is not
 * empty"), a concurrent CREATE DATABASE, a wait for a Postgres the first had
 * already stopped ("lock file postmaster.pid already exists", after 10 s),
 * or a ClickHouse that stopped between its answer and the second's hold
 * (ECONNREFUSED).
 */
describe('commands started at once on the same embedded servers', () => {
  let dir: string;
  let env: Record<string, string>;
  let ports: { postgres: number; clickhouse: number };

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tracing-at-once-'));
    // mkdtemp makes it 0700; PostgreSQL runs as the `postgres` user when we are root.
    await chmod(dir, 0o755);
    ports = { postgres: await freePort(), clickhouse: await freePort() };
    env = {
      EMBEDDED_DATA_DIR: dir,
      EMBEDDED_POSTGRES_PORT: String(ports.postgres),
      EMBEDDED_CLICKHOUSE_PORT: String(ports.clickhouse),
      DATABASE_URL: '',
      CLICKHOUSE_URL: '',
    };
  });

  afterEach(async () => {
    await stopPostmasterOf(join(dir, 'postgres'));
    await rm(dir, { recursive: true, force: true });
  });

  const twoAtOnce = (script: 'migrate' | 'migrate-clickhouse'): Promise<CommandRun[]> =>
    Promise.all([runCommand(script, [], env), runCommand(script, [], env)]);

  const listening = (port: number) =>
    new Promise<boolean>((done) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => done(socket.destroy() && true));
      socket.once('error', () => done(false));
    });

  const stopped = (port: number) => eventually(`127.0.0.1:${port} to be closed`, async () => !(await listening(port)), 15_000, 100);

  it('npm run migrate, twice at once on a new data directory, then again on the one they made', async () => {
    const first = await twoAtOnce('migrate');
    expect(first.map((run) => run.code)).toEqual([0, 0]);
    // The migration was applied once, by one of them; the other found it applied or waited for its lock.
    expect(first.filter((run) => run.stderr.includes('applied 0001_initial\n'))).toHaveLength(1);
    expect(existsSync(join(dir, 'postgres', 'PG_VERSION'))).toBe(true);
    // Each initialised a cluster beside it; the one that lost the race was removed.
    expect((await readdir(dir)).filter((name) => name.startsWith('postgres'))).toEqual(['postgres']);

    // The race that remains once the directory exists: both start the server; the one that loses the
    // directory's lock joins the other's, or starts it again once the other has stopped it.
    for (let round = 0; round < 3; round++) {
      await stopped(ports.postgres);
      const again = await twoAtOnce('migrate');
      expect(again.map((run) => [run.code, run.stderr.match(/^(error|nothing to do).*$/m)?.[0]])).toEqual([
        [0, 'nothing to do: already at the requested version'],
        [0, 'nothing to do: already at the requested version'],
      ]);
    }
    await stopped(ports.postgres);
  }, 120_000);

  it('npm run migrate:clickhouse, twice at once on a new data directory, then again on the one they made', async () => {
    for (let round = 0; round < 4; round++) {
      await stopped(ports.clickhouse);
      const runs = await twoAtOnce('migrate-clickhouse');
      // On the new directory both may apply the migrations, run at the same moment (each statement is
      // IF NOT EXISTS, and schema_migrations keeps one row a version); after that neither has anything to do.
      const said = runs.map((run) => [run.code, run.stderr.match(/^(error|nothing to do).*$/m)?.[0]]);
      const meant = round === 0 ? runs.map((run) => [run.code, run.stderr.match(/^error.*$/m)?.[0]]) : said;
      const expected = round === 0 ? [[0, undefined], [0, undefined]] : [[0, 'nothing to do: ClickHouse database tracing is up to date'], [0, 'nothing to do: ClickHouse database tracing is up to date']];
      // A failure shows each run's whole stderr (a server's start error has its log's tail below its first line).
      if (JSON.stringify(meant) !== JSON.stringify(expected)) throw new Error(`round ${round}: ${JSON.stringify(meant)}\n${runs.map((run) => run.stderr).join('\n--- the other run ---\n')}`);
    }
    await stopped(ports.clickhouse);
  }, 120_000);

  it('migrate:clickhouse on a local ClickHouse that stops as it joins (its quick starter was done): it starts one of its own', async () => {
    // Answers as ClickHouse, then goes away when asked to be held, as a server whose quick starter
    // saw no one holding it and stopped it between the command's look and its hold.
    const stopping = createHttpServer((req, res) => {
      if (req.url === '/ping') return void res.end('Ok.\n');
      req.socket.destroy();
      stopping.close();
    });
    await new Promise<void>((done) => stopping.listen(ports.clickhouse, '127.0.0.1', done));
    const run = await runCommand('migrate-clickhouse', [], env);
    expect({ code: run.code, error: run.stderr.match(/^error.*$/m)?.[0] }).toEqual({ code: 0, error: undefined });
    expect(run.stderr).toContain(`local ClickHouse listening on http://127.0.0.1:${ports.clickhouse}, data in ${dir}/clickhouse\n`);
    expect(run.stderr).toContain('applied ClickHouse migration 0001_spans\n');
  }, 60_000);
});
