import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { localPostgresUrl } from '../../src/dbs/postgres/local-postgres';
import { freePort } from '../support/free-port';

/** The embedded server in a process of its own (test/support/local-postgres-probe.main.ts), as the API and the commands run it. */
describe('embedded Postgres', () => {
  it('stops at once when its server has already died, and leaves the process its exit code', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tracing-local-pg-'));
    // mkdtemp makes it 0700; PostgreSQL runs as the `postgres` user when we are root.
    await chmod(dir, 0o755);
    try {
      const { NODE_OPTIONS: _jest, ...env } = process.env;
      const child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, '../support/local-postgres-probe.main.ts'), String(await freePort()), join(dir, 'data')], { env });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const code = await new Promise<number | null>((done) => child.on('close', done));
      // async-exit-hook turned the end of the event loop into exit(0), and waited 10 s on a dead server.
      expect({ code, stderr }).toEqual({ code: 3, stderr: '' });
      expect(JSON.parse(stdout).stopMs).toBeLessThan(2_000);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it('is left running when another process still has sessions on it (an API that joined it), and stopped when none has', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tracing-local-pg-'));
    await chmod(dir, 0o755);
    const dataDir = join(dir, 'data');
    const { NODE_OPTIONS: _jest, ...env } = process.env;
    const run = async (holdSession: boolean) => {
      const child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, '../support/local-postgres-shared.main.ts'), String(port), dataDir], { env });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const closed = new Promise<number | null>((done) => child.on('close', done));
      while (!stdout.includes('\n')) {
        if (child.exitCode !== null) throw new Error(`the probe exited: ${stderr}`);
        await new Promise((done) => setTimeout(done, 50));
      }
      const { url } = JSON.parse(stdout.split('\n')[0]) as { url: string };
      const session = holdSession ? new Client({ connectionString: url }) : null;
      await session?.connect();
      child.stdin.write('stop\n');
      expect(await closed).toBe(0);
      const { logs } = JSON.parse(stdout.split('\n')[1]) as { logs: string[] };
      await session?.end();
      return { logs, answering: await answers(url) };
    };
    const port = await freePort();
    try {
      const shared = await run(true);
      expect(shared.answering).toBe(true);
      expect(shared.logs).toContain(`embedded PostgreSQL left running on 127.0.0.1:${port}: 1 session(s) of other processes use it`);
      // The next one finds it running and uses it; it did not start it, so it does not stop it.
      expect((await run(false)).answering).toBe(true);
      // Started afresh by a process alone on it: stopped by it.
      await stopPostmaster(dataDir);
      const alone = await run(false);
      expect(alone.logs.filter((line) => line.includes('left running'))).toEqual([]);
      expect(await answers(localPostgresUrl(port, 'postgres'))).toBe(false);
    } finally {
      await stopPostmaster(dataDir);
      await rm(dir, { recursive: true, force: true });
    }
  }, 90_000);
});

async function answers(url: string): Promise<boolean> {
  const client = new Client({ connectionString: url, connectionTimeoutMillis: 2_000 });
  try {
    await client.connect();
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Stops the server of this data directory, whoever started it (postmaster.pid names it), and waits for it to go. */
async function stopPostmaster(dataDir: string): Promise<void> {
  let pid: number;
  try {
    pid = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch {
    return;
  }
  const alive = () => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  if (alive()) process.kill(pid, 'SIGINT');
  for (let i = 0; i < 200 && alive(); i++) await new Promise((done) => setTimeout(done, 50));
}
