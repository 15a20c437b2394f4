import { createServer, Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LOCAL_HOLDERS_PATH, LOCAL_STOPPING_HEADER, startLocalClickHouse, stopUnlessHeld } from './local-clickhouse';

/** An HTTP server on a free loopback port, answering with `handle`; closed after each test. */
function fakeServer(servers: Server[], handle: Parameters<typeof createServer>[1]): Promise<number> {
  const server = createServer(handle);
  servers.push(server);
  return new Promise((listening) => server.listen(0, '127.0.0.1', () => listening((server.address() as AddressInfo).port)));
}

async function closeAll(servers: Server[]): Promise<void> {
  for (const server of servers.splice(0)) {
    server.closeAllConnections();
    await new Promise((closed) => server.close(closed));
  }
}

/**
 * A ClickHouse of its own on the local port, behind something that answers
 * the holders' path with a 503 (a proxy under load): used as it is, not read
 * as our local server stopping (that 503 carries x-local-clickhouse).
 */
describe('startLocalClickHouse on a port where a ClickHouse not ours answers', () => {
  const servers: Server[] = [];
  let dir: string;
  afterEach(async () => {
    await closeAll(servers);
    await rm(dir, { recursive: true, force: true });
  });

  it("uses it without holding it, though its answer to the holders' path is a 503", async () => {
    const holds: string[] = [];
    const port = await fakeServer(servers, (req, res) => {
      if (req.url === '/ping') return void res.end('Ok.\n');
      if (req.url?.startsWith(LOCAL_HOLDERS_PATH)) holds.push(req.url);
      res.writeHead(503).end('service unavailable\n');
    });
    dir = await mkdtemp(join(tmpdir(), 'tracing-ch-503-'));
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

/**
 * A local server of ours that stopped between its answer to /ping and this
 * process's hold (its starter was done with it), and another command's
 * server on the port by the time this one looks again: the stopping server's
 * 503 is read as "gone", and the next server on the port is joined.
 */
describe('startLocalClickHouse when the server it was about to join is stopping', () => {
  const servers: Server[] = [];
  let dir: string;
  afterEach(async () => {
    await closeAll(servers);
    await rm(dir, { recursive: true, force: true });
  });

  it('tries again and holds the server that answers next', async () => {
    const holds: string[] = [];
    const port = await fakeServer(servers, (req, res) => {
      if (req.url === '/ping') return void res.end('Ok.\n');
      if (!req.url?.startsWith(LOCAL_HOLDERS_PATH)) return void res.writeHead(404).end();
      holds.push(req.url);
      // The first hold meets the old server stopping; later ones a new server, which keeps the request open.
      if (holds.length === 1) return void res.writeHead(503, { [LOCAL_STOPPING_HEADER]: 'stopping' }).end('this local ClickHouse is stopping\n');
      res.writeHead(200).write('held\n');
    });
    dir = await mkdtemp(join(tmpdir(), 'tracing-ch-gone-'));
    const logged: string[] = [];

    const resolved = await startLocalClickHouse({ port, dataDir: dir, log: (line) => logged.push(line) });
    try {
      expect(resolved).toEqual({ url: `http://127.0.0.1:${port}`, release: expect.any(Function) });
      expect(holds).toEqual([`${LOCAL_HOLDERS_PATH}?hold=${process.pid}`, `${LOCAL_HOLDERS_PATH}?hold=${process.pid}`]);
      expect(logged).toContain(`using the local ClickHouse at http://127.0.0.1:${port} that another process started`);
    } finally {
      resolved.release?.();
    }
  });
});

/** The starter's question to its server when done with it: the server's answer, read strictly. */
describe('stopUnlessHeld', () => {
  const servers: Server[] = [];
  afterEach(() => closeAll(servers));

  const askAnswering = async (status: number, body: string) => {
    const asked: string[] = [];
    const port = await fakeServer(servers, (req, res) => {
      asked.push(`${req.method} ${req.url}`);
      res.writeHead(status, { 'Content-Type': 'application/json' }).end(body);
    });
    const answer = await stopUnlessHeld(`http://127.0.0.1:${port}`);
    expect(asked).toEqual([`POST ${LOCAL_HOLDERS_PATH}?stop-unless-held=${process.pid}`]);
    return answer;
  };

  it('reads "stopping" and the pids of the processes that hold it', async () => {
    expect(await askAnswering(200, '{"stopping":true,"pids":[]}\n')).toBe('stopping');
    expect(await askAnswering(200, '{"stopping":false,"pids":[4242,4343]}\n')).toEqual([4242, 4343]);
  });

  it('reads anything else as no answer, so the server is stopped anyway', async () => {
    for (const [status, body] of [
      [200, '{"stopping":false,"pids":[]}'],
      [200, '{"stopping":false,"pids":["4242"]}'],
      [200, '{"stopping":"yes"}'],
      [200, 'not json'],
      [405, 'stop-unless-held takes POST\n'],
      [500, '{"stopping":false,"pids":[4242]}'],
    ] as const) {
      expect(await askAnswering(status, body)).toBe('no answer');
    }
    const nobody = await fakeServer(servers, () => undefined);
    await closeAll(servers);
    expect(await stopUnlessHeld(`http://127.0.0.1:${nobody}`)).toBe('no answer');
  });
});
