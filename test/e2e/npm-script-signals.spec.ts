import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { processAlive } from '../../src/dbs/process-alive';
import { ROOT } from '../../scripts/cli/api-process';
import { clickHouseReadyUrl } from '../support/commands';

/**
 * A signal to `npm run <script>` (a process manager's SIGTERM, `kill` of the
 * npm pid) reaches only npm's own child. npm runs a script through `sh -c`,
 * and dash does not hand a lone command the shell's place: without `exec`
 * the shell took the signal and died, and the program it started (the API
 * of `start:prod`, the local ClickHouse, a backfill) went on running as an
 * orphan, still holding its port.
 */
describe('npm scripts that run one long-lived program', () => {
  const scripts: Record<string, string> = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).scripts;

  it('exec it, so a signal to npm reaches it', () => {
    const running = Object.entries(scripts)
      .map(([name, command]) => [name, command.split('&&').pop()!.trim()] as const)
      .filter(([, last]) => /^(exec\s+)?(node|tsx)\s/.test(last));
    expect(running.length).toBeGreaterThan(5);
    expect(running.filter(([, last]) => !last.startsWith('exec ')).map(([name]) => name)).toEqual([]);
  });

  /** The pids below `pid`, as ps reports them now. */
  function descendants(pid: number): number[] {
    const rows = execFileSync('ps', ['-A', '-o', 'pid=,ppid='], { encoding: 'utf8' })
      .trim()
      .split('\n')
      .map((line) => line.trim().split(/\s+/).map(Number));
    const found: number[] = [];
    for (let frontier = [pid]; frontier.length; ) {
      const next = rows.filter(([, ppid]) => frontier.includes(ppid)).map(([child]) => child);
      found.push(...next);
      frontier = next;
    }
    return found;
  }

  it('npm run clickhouse:local stops, server included, on a SIGTERM to npm', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'clickhouse-local-npm-'));
    const { NODE_OPTIONS: _jest, ...env } = process.env;
    // The npm beside this node, as an operator's PATH finds it.
    env.PATH = `${dirname(process.execPath)}:${env.PATH ?? ''}`;
    const npm = spawn('npm', ['run', '-s', 'clickhouse:local', '--', '--port', '0', '--data-dir', dataDir], { cwd: ROOT, env });
    let stderr = '';
    npm.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    // 'exit', not 'close': an orphan would hold npm's pipes open.
    const exited = new Promise<void>((done) => npm.on('exit', () => done()));
    let below: number[] = [];
    try {
      const url = await clickHouseReadyUrl(npm.stdout, exited, () => `npm exited before the server was ready: ${stderr}`);
      below = descendants(npm.pid!);
      expect(below.length).toBeGreaterThan(0);
      npm.kill('SIGTERM');
      await exited;
      const deadline = Date.now() + 10_000;
      while (below.some(processAlive) && Date.now() < deadline) await new Promise((done) => setTimeout(done, 100));
      expect(below.filter(processAlive)).toEqual([]);
      await expect(fetch(`${url}/?query=SELECT%201`)).rejects.toThrow();
      expect(stderr).toContain('local ClickHouse stopping (SIGTERM)');
    } finally {
      for (const pid of [npm.pid!, ...below].filter(processAlive)) process.kill(pid, 'SIGKILL');
      rmSync(dataDir, { recursive: true, force: true });
    }
  }, 60_000);
});
