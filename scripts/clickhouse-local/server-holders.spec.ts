import { createServer, request, Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { LOCAL_STOPPING_HEADER } from '../../src/dbs/clickhouse/local-clickhouse';
import { ServerHolders } from './server-holders';

/** The holders' path on a plain HTTP server, as the local ClickHouse serves it. */
describe('ServerHolders', () => {
  let holders: ServerHolders;
  let server: Server;
  let base: string;
  const open: Array<() => void> = [];

  beforeEach(async () => {
    holders = new ServerHolders();
    server = createServer((req, res) => holders.handle(req, res, new URL(req.url!, 'http://local')));
    await new Promise<void>((listening) => server.listen(0, '127.0.0.1', listening));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterEach(async () => {
    open.splice(0).forEach((release) => release());
    server.closeAllConnections();
    await new Promise((closed) => server.close(closed));
  });

  /** A hold as a joiner takes it: the status, and (when 200) the request kept open until the test ends. */
  const hold = (pid: number) =>
    new Promise<number | string>((answered, failed) => {
      const req = request(`${base}/local/holders?hold=${pid}`, { agent: false }, (res) => {
        res.resume();
        if (res.statusCode === 200) open.push(() => req.destroy());
        // A refusal shows the header that marks it as this server's (a proxy's 503 lacks it).
        const marked = res.headers[LOCAL_STOPPING_HEADER];
        answered(marked ? `${res.statusCode} ${String(marked)}` : res.statusCode!);
      });
      req.on('error', failed);
      req.end();
    });

  const stopUnlessHeld = async (pid: number) => (await fetch(`${base}/local/holders?stop-unless-held=${pid}`, { method: 'POST' })).json();

  it("stays while another process holds it, and says who; holds are still taken", async () => {
    expect(await hold(111)).toBe(200);
    expect(await stopUnlessHeld(999)).toEqual({ stopping: false, pids: [111] });
    expect(await hold(222)).toBe(200);
    expect(holders.pids().sort()).toEqual([111, 222]);
  });

  it('held by nobody: stopping from then on, and a hold that comes after is refused (503), not cut later with the server', async () => {
    expect(await stopUnlessHeld(999)).toEqual({ stopping: true, pids: [] });
    expect(await hold(111)).toBe('503 stopping');
    expect(holders.pids()).toEqual([]);
    // Decided once: asking again does not reopen it.
    expect(await stopUnlessHeld(999)).toEqual({ stopping: true, pids: [] });
  });

  it('takes stop-unless-held as a POST only: a stray GET closes nothing', async () => {
    const got = await fetch(`${base}/local/holders?stop-unless-held=999`);
    expect([got.status, got.headers.get('allow')]).toEqual([405, 'POST']);
    expect(await hold(111)).toBe(200);
  });

  it("does not count the asking process's own hold", async () => {
    expect(await hold(999)).toBe(200);
    expect(await stopUnlessHeld(999)).toEqual({ stopping: true, pids: [] });
  });

  it('lists the holders without ?hold, and settles none() once the last hold ends', async () => {
    expect(await hold(111)).toBe(200);
    expect(await (await fetch(`${base}/local/holders`)).json()).toEqual({ pids: [111] });
    const none = holders.none();
    open.splice(0).forEach((release) => release());
    await none;
    expect(holders.pids()).toEqual([]);
  });
});
