import { spawn } from 'node:child_process';
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

  it('serves, prints its ready line for the resolver, and stops with exit 0 on SIGTERM', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'clickhouse-local-'));
    const { NODE_OPTIONS: _jest, ...env } = process.env;
    const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/clickhouse-local/main.ts', '--port', '0', '--data-dir', dataDir], { cwd: ROOT, env });
    try {
      let stdout = '';
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const exited = new Promise<number | null>((done) => child.on('close', (code) => done(code)));
      const url = await new Promise<string>((ready, failed) => {
        child.stdout.on('data', (chunk: Buffer) => {
          stdout += chunk.toString();
          const line = /^CLICKHOUSE_LOCAL_READY (\S+)/m.exec(stdout);
          if (line) ready(line[1]);
        });
        void exited.then((code) => failed(new Error(`exited ${code} before it was ready: ${stderr}`)));
      });
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:(?!0$)\d+$/);
      expect(await (await fetch(`${url}/?query=SELECT%201`)).text()).toBe('1\n');
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(stderr).toContain('local ClickHouse stopping (SIGTERM)');
    } finally {
      child.kill('SIGKILL');
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 60_000);
});
