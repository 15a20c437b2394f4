import { createServer, Server } from 'node:http';
import { AddressInfo, Socket } from 'node:net';
import { ApiClient, sleep } from './http-load';

describe('ApiClient', () => {
  let server: Server;
  const closedByClient: Socket[] = [];

  beforeEach(async () => {
    server = createServer((_req, res) => res.end('ok'));
    // The server announces `Keep-Alive: timeout=2` and closes sockets idle for 2 s.
    server.keepAliveTimeout = 2_000;
    server.on('connection', (socket: Socket) => socket.on('end', () => closedByClient.push(socket)));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  });

  afterEach(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    closedByClient.length = 0;
  });

  it("closes an idle socket before the server's keep-alive timeout, so no request is written as the server closes it", async () => {
    const client = new ApiClient(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, 'key', 4);
    try {
      const answer = await client.send('GET', '/');
      expect(answer).toMatchObject({ status: 200, body: 'ok' });
      // The server would close the socket at 2 s; the client must have done so first (at the hint less a second).
      // Polled until just before the server's own close, so a late timer on a busy machine is not a failure.
      const answered = Date.now();
      while (closedByClient.length === 0 && Date.now() - answered < 1_900) await sleep(25);
      expect(closedByClient).toHaveLength(1);
    } finally {
      client.close();
    }
  });
});
