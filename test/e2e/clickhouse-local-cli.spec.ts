import { spawn } from 'node:child_process';
import { request } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from '../support/api-process';
import { runCommand } from '../support/commands';

/** `npm run clickhouse:local` as an operator runs it, and as the server resolver starts it (a child waiting for its ready line). */
describe('npm run clickhouse:local', () => {
  const local = (...args: string[]) => runCommand('clickhouse-local/main', args, { EMBEDDED_CLICKHOUSE_PORT: '1' });
  const USAGE = 'usage: npm run clickhouse:local -- [--port N] [--host H] [--data-dir DIR] [--exit-with-parent]';

  it('refuses bad arguments with exit 2 and the usage, before starting anything', async () => {
    const cases: Array<[string[], string]> = [
      [['--port='], '--port needs a value'],
      [['--port', 'abc'], '--port must be a whole number from 0 to 65535, got "abc"'],
      [['--port', '65536'], '--port must be a whole number from 0 to 65535, got "65536"'],
      [['--port', '-1'], '--port must be a whole number from 0 to 65535, got "-1"'],
      [['--sideways'], 'unknown option "--sideways"'],
    ];
    const runs = await Promise.all(cases.map(([args]) => local(...args)));
    runs.forEach((run, i) => {
      expect({ args: cases[i][0], code: run.code, stdout: run.stdout }).toEqual({ args: cases[i][0], code: 2, stdout: '' });
      const expected = `error: ${cases[i][1]}\n\n${USAGE}`;
      expect(run.stderr.slice(0, expected.length)).toBe(expected);
    });
  });

  it('--help prints the usage and exits 0', async () => {
    const help = await local('--help');
    expect(help).toMatchObject({ code: 0, stderr: '' });
    expect(help.stdout.startsWith(USAGE)).toBe(true);
  });

  /** Starts the server as the resolver does and waits for its ready line. */
  async function startServer() {
    const dataDir = mkdtempSync(join(tmpdir(), 'clickhouse-local-'));
    const { NODE_OPTIONS: _jest, ...env } = process.env;
    const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/clickhouse-local/main.ts', '--port', '0', '--data-dir', dataDir], { cwd: ROOT, env });
    let stdout = '';
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<number | null>((done) => child.on('close', (code) => done(code)));
    const cleanUp = () => {
      child.kill('SIGKILL');
      rmSync(dataDir, { recursive: true, force: true });
    };
    try {
      const url = await new Promise<string>((ready, failed) => {
        child.stdout.on('data', (chunk: Buffer) => {
          stdout += chunk.toString();
          const line = /^CLICKHOUSE_LOCAL_READY (\S+)/m.exec(stdout);
          if (line) ready(line[1]);
        });
        void exited.then((code) => failed(new Error(`exited ${code} before it was ready: ${stderr}`)));
      });
      return { child, url, exited, stderr: () => stderr, cleanUp };
    } catch (error) {
      cleanUp();
      throw error;
    }
  }

  it('serves, prints its ready line for the resolver, and stops with exit 0 on SIGTERM', async () => {
    const server = await startServer();
    try {
      expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:(?!0$)\d+$/);
      expect(await (await fetch(`${server.url}/?query=SELECT%201`)).text()).toBe('1\n');
      server.child.kill('SIGTERM');
      expect(await server.exited).toBe(0);
      expect(server.stderr()).toContain('local ClickHouse stopping (SIGTERM)');
    } finally {
      server.cleanUp();
    }
  }, 60_000);

  it('lets go of a streamed query whose client left before the first rows were ready: it stops at once on SIGTERM', async () => {
    // What an interrupted `verify` does. The server used to miss the hang-up and wait forever to write those
    // rows, holding the engine's stream: its stop ran into the resolver's 5 s SIGKILL.
    const server = await startServer();
    try {
      const port = Number(new URL(server.url).port);
      const left = new Promise<void>((done) => {
        const query = request({ host: '127.0.0.1', port, method: 'POST', path: '/' }, () => undefined);
        query.on('error', () => done());
        // About a second before its first block of rows is ready.
        query.end('SELECT number, sleepEachRow(0.001) FROM numbers(3000) SETTINGS max_block_size = 1000 FORMAT TSV');
        setTimeout(() => (query.destroy(), done()), 200);
      });
      await left;
      await new Promise((done) => setTimeout(done, 1_500)); // the first block is out by now
      const asked = Date.now();
      server.child.kill('SIGTERM');
      let timer: NodeJS.Timeout | undefined;
      const code = await Promise.race([server.exited, new Promise((done) => (timer = setTimeout(() => done('still running after 3 s'), 3_000)))]);
      clearTimeout(timer);
      expect(code).toBe(0);
      expect(Date.now() - asked).toBeLessThan(3_000);
    } finally {
      server.cleanUp();
    }
  }, 60_000);
});
