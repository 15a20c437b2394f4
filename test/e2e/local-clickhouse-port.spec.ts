import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer as createTcpServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCommand } from '../support/commands';
import { freePort } from '../../scripts/cli/free-port';

/**
 * A command resolving the local ClickHouse (here `npm run migrate:clickhouse`)
 * whose port another program holds: it stops with one line naming the port
 * and the setting, without waiting out the start of a server of its own
 * (30 s) and without touching the data directory.
 */
describe('the local ClickHouse port, held by a program that is not ClickHouse', () => {
  let dir: string;
  let port: number;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tracing-ch-port-'));
    port = await freePort();
  });

  afterEach(() => rm(dir, { recursive: true, force: true }));

  async function migrateWith(squatter: Server | HttpServer) {
    await new Promise<void>((done) => squatter.listen(port, '127.0.0.1', done));
    try {
      const started = Date.now();
      const run = await runCommand('migrate-clickhouse', [], { EMBEDDED_DATA_DIR: dir, EMBEDDED_CLICKHOUSE_PORT: String(port), CLICKHOUSE_URL: '' });
      return { ...run, ms: Date.now() - started };
    } finally {
      // An HTTP server keeps the command's kept-alive connection open otherwise.
      if ('closeAllConnections' in squatter) squatter.closeAllConnections();
      await new Promise((done) => squatter.close(done));
    }
  }

  const refusal = () =>
    `error: 127.0.0.1:${port} is in use by a program that does not answer as ClickHouse: ` +
    'stop it, or set EMBEDDED_CLICKHOUSE_PORT to a free port (or CLICKHOUSE_URL to a ClickHouse of your own)\n';

  it('an HTTP server that is not ClickHouse: exit 1 with one line, at once', async () => {
    const run = await migrateWith(createHttpServer((_req, res) => res.writeHead(404).end('Not Found')));
    expect({ code: run.code, stderr: run.stderr }).toEqual({ code: 1, stderr: refusal() });
    expect(run.ms).toBeLessThan(15_000);
    expect(existsSync(join(dir, 'clickhouse'))).toBe(false);
  }, 60_000);

  it('a server that cuts its connections and then frees the port (one of ours, stopping): waits, then starts its own', async () => {
    // The command's first look is one connection and its lost start's first look another: the third means it asked
    // again after a cut, as it must while another command stops a server of ours.
    let connections = 0;
    const stopping = createTcpServer((socket) => {
      socket.destroy();
      if (++connections === 3) stopping.close();
    });
    const run = await migrateWith(stopping);
    expect(connections).toBeGreaterThanOrEqual(3);
    expect({ code: run.code, error: /^error: .*$/m.exec(run.stderr)?.[0] }).toEqual({ code: 0, error: undefined });
    expect(existsSync(join(dir, 'clickhouse'))).toBe(true);
  }, 60_000);

  it('a program speaking another protocol: the same', async () => {
    const run = await migrateWith(createTcpServer((socket) => socket.resume().end('SSH-2.0-OpenSSH_9.2\r\n')));
    expect({ code: run.code, stderr: run.stderr }).toEqual({ code: 1, stderr: refusal() });
    expect(run.ms).toBeLessThan(15_000);
    expect(existsSync(join(dir, 'clickhouse'))).toBe(false);
  }, 60_000);
});
