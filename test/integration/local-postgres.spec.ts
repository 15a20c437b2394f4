import { readFileSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { localPostgresUrl, startLocalPostgres } from '../../src/dbs/postgres/local-postgres';
import { freePort } from '../support/free-port';

/** The embedded server as the API's shutdown stops it. */
describe('embedded Postgres', () => {
  it('stops at once when its server has already died', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tracing-local-pg-'));
    // mkdtemp makes it 0700; PostgreSQL runs as the `postgres` user when we are root.
    await chmod(dir, 0o755);
    const port = await freePort();
    try {
      const server = await startLocalPostgres({ port, dataDir: join(dir, 'data'), database: 'tracing' });
      const admin = new Client({ connectionString: localPostgresUrl(port, 'postgres') });
      await admin.connect();
      const { rows } = await admin.query<{ pid: number }>('select pg_backend_pid() as pid');
      // The postmaster is the backend's parent; SIGQUIT ends it at once, as a crash would.
      const postmaster = Number(readFileSync(`/proc/${rows[0].pid}/stat`, 'utf8').split(') ')[1].split(' ')[1]);
      await admin.end().catch(() => undefined);
      process.kill(postmaster, 'SIGQUIT');
      for (let i = 0; i < 100 && (await alive(postmaster)); i++) await new Promise((done) => setTimeout(done, 50));

      const startedAt = Date.now();
      await server.stop!();
      expect(Date.now() - startedAt).toBeLessThan(2_000);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);
});

async function alive(pid: number): Promise<boolean> {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
