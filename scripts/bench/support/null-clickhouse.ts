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
export async function startNullClickHouse(): Promise<{ url: string; bytesReceived(): number; stop(): Promise<void> }> {
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
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    bytesReceived: () => bytes,
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
