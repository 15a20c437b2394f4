import { ClickHouseLogLevel, createClient } from '@clickhouse/client';
import { createServer, IncomingHttpHeaders, Server } from 'node:http';
import { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { brotliDecompressSync } from 'node:zlib';
import { ClickHouseSink, linesBody } from './clickhouse-sink';

interface Received {
  url: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/**
 * An HTTP endpoint that keeps what it was sent and answers as ClickHouse
 * answers an insert, or drops the connection once the body has started.
 * What the real engine makes of these bodies is the integration specs'
 * business; this one checks what goes on the wire.
 */
async function endpoint(behaviour: 'answer' | 'drop' = 'answer', compress = true) {
  const received: Received[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      if (behaviour === 'drop') req.socket.destroy();
    });
    req.on('end', () => {
      received.push({ url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks) });
      res.writeHead(200, { 'content-type': 'text/plain', 'x-clickhouse-summary': '{}' }).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const client = createClient({ url, compression: { request: false, response: false }, request_timeout: 5000, log: { level: ClickHouseLogLevel.OFF } });
  return {
    received,
    sink: new ClickHouseSink(client, { compress }),
    close: async () => {
      await client.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe('ClickHouseSink on the wire', () => {
  it('sends the lines brotli-compressed, one per line, with the deduplication token and the insert settings', async () => {
    const { received, sink, close } = await endpoint();
    try {
      // ~3 MB: several 1 MiB chunks of lines, as verify and the gap replays send them.
      const lines = Array.from({ length: 3000 }, (_, i) => JSON.stringify({ i, text: `ünïcødé ${'x'.repeat(1000)} ${i}` }));
      await sink.insert('spans', linesBody(lines), 'token-1');

      expect(received).toHaveLength(1);
      const [request] = received;
      expect(request.headers['content-encoding']).toBe('br');
      expect(brotliDecompressSync(request.body).toString('utf8')).toBe(lines.map((line) => `${line}\n`).join(''));
      const params = new URL(request.url, 'http://x').searchParams;
      expect(params.get('query')).toBe('INSERT INTO spans FORMAT JSONEachRow');
      expect(params.get('insert_deduplication_token')).toBe('token-1');
      expect(params.get('input_format_json_read_objects_as_strings')).toBe('1');
      expect(params.get('input_format_json_read_arrays_as_strings')).toBe('1');
    } finally {
      await close();
    }
  });

  it('streams TabSeparated rows compressed as they come', async () => {
    const { received, sink, close } = await endpoint();
    try {
      const rows = ['a\t1\n', 'b\t2\n', 'c\t3\n'];
      await sink.insertTabSeparated('nodes', ['node_id', 'version'], Readable.from(rows.map((r) => Buffer.from(r))), 'token-2');
      expect(brotliDecompressSync(received[0].body).toString('utf8')).toBe(rows.join(''));
      expect(new URL(received[0].url, 'http://x').searchParams.get('query')).toBe('INSERT INTO nodes (`node_id`, `version`) FORMAT TabSeparated');
    } finally {
      await close();
    }
  });

  it('sends the body as it is when told not to compress (a server on the same machine)', async () => {
    const { received, sink, close } = await endpoint('answer', false);
    try {
      // Pieces as the batch writer hands them over: slices holding whole lines.
      await sink.insert('spans', [Buffer.from('{"a":1}\n{"a":2}\n'), Buffer.from('{"a":3}\n')], 'token-4');
      expect(received[0].headers['content-encoding']).toBeUndefined();
      expect(received[0].body.toString('utf8')).toBe('{"a":1}\n{"a":2}\n{"a":3}\n');
    } finally {
      await close();
    }
  });

  it('fails the insert when the connection drops mid-body, and the rows stream is destroyed, not left open', async () => {
    const { sink, close } = await endpoint('drop');
    try {
      // Endless rows: only a destroyed stream stops being read.
      let produced = 0;
      const rows = new Readable({
        read() {
          produced += 1;
          this.push(Buffer.alloc(64 * 1024, 0x61 + (produced % 26)));
        },
      });
      await expect(sink.insertTabSeparated('spans', ['project_id'], rows, 'token-3')).rejects.toThrow();
      await new Promise((resolve) => setImmediate(resolve));
      expect(rows.destroyed).toBe(true);
    } finally {
      await close();
    }
  });
});
