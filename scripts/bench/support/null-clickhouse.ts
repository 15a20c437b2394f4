import { createServer, Server } from 'node:http';
import { AddressInfo } from 'node:net';

/**
 * A ClickHouse HTTP endpoint that answers everything and stores nothing:
 * /ping says Ok., every query succeeds with an empty result (so the DDL
 * runner finds no applied migrations, applies them and is done), every
 * insert body is read and dropped. With it, the flag-on write path pays only
 * the API's own mirroring work (mapping, queueing, compression, HTTP), not a local
 * ClickHouse competing for the same two cores.
 */
export interface NullClickHouse {
  url: string;
  bytesReceived(): number;
  /** Stops listening and cuts every connection: from now on a connection is refused, as by a ClickHouse that went down. */
  goDown(): Promise<void>;
  /** Listens again on the same port (not once stopped). */
  comeBack(): Promise<void>;
  stop(): Promise<void>;
}

export async function startNullClickHouse(): Promise<NullClickHouse> {
  let bytes = 0;
  const server: Server = createServer((req, res) => {
    req.on('data', (chunk: Buffer) => (bytes += chunk.length));
    req.on('end', () => {
      if (req.url?.startsWith('/ping')) {
        res.writeHead(200, { 'content-type': 'text/plain' }).end('Ok.\n');
        return;
      }
      res.writeHead(200, { 'content-type': 'text/plain', 'x-clickhouse-summary': '{}' }).end();
    });
  });
  const listen = (port: number) => new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, '127.0.0.1', () => (server.off('error', reject), resolve())));
  const close = () =>
    new Promise<void>((resolve) => {
      if (!server.listening) return resolve();
      server.closeAllConnections();
      server.close(() => resolve());
    });
  await listen(0);
  const { port } = server.address() as AddressInfo;
  let stopped = false;
  // A listen binds a moment after it is asked: a stop in that moment waits for it, or the server would stay up.
  let relistening: Promise<void> = Promise.resolve();
  return {
    url: `http://127.0.0.1:${port}`,
    bytesReceived: () => bytes,
    goDown: close,
    comeBack: async () => {
      if (stopped) return;
      relistening = listen(port);
      await relistening;
    },
    stop: async () => {
      stopped = true;
      await relistening.catch(() => undefined);
      await close();
    },
  };
}
