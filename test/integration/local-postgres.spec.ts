import { spawn } from 'node:child_process';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
});
