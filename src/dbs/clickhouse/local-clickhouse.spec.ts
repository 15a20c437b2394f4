import { createServer, Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LOCAL_HOLDERS_PATH, startLocalClickHouse } from './local-clickhouse';

/**
 * A ClickHouse of its own on the local port, behind something that answers
 * the holders' path with a 503 (a proxy under load): used as it is, not read
 * as our local server stopping (that 503 carries x-local-clickhouse).
 */
describe('startLocalClickHouse on a port where a ClickHouse not ours answers', () => {
  let server: Server;
  let dir: string;

  afterEach(async () => {
    server.closeAllConnections();
    await new Promise((closed) => server.close(closed));
    await rm(dir, { recursive: true, force: true });
  });

  it("uses it without holding it, though its answer to the holders' path is a 503", async () => {
    const holds: string[] = [];
    server = createServer((req, res) => {
      if (req.url === '/ping') return void res.end('Ok.\n');
      if (req.url?.startsWith(LOCAL_HOLDERS_PATH)) holds.push(req.url);
      res.writeHead(503).end('service unavailable\n');
    });
    await new Promise<void>((listening) => server.listen(0, '127.0.0.1', listening));
    dir = await mkdtemp(join(tmpdir(), 'tracing-ch-503-'));
    const { port } = server.address() as AddressInfo;
    const logged: string[] = [];

    const started = Date.now();
    const resolved = await startLocalClickHouse({ port, dataDir: dir, log: (line) => logged.push(line) });
    // At once: no server of its own started, and no 30 s of starting one again.
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(resolved).toEqual({ url: `http://127.0.0.1:${port}` });
    expect(holds).toHaveLength(1);
    expect(logged).toEqual([`using the ClickHouse that already answers at http://127.0.0.1:${port}`]);
  });
});
