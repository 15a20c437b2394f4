import { Agent, createServer, IncomingHttpHeaders, IncomingMessage, request as httpRequest, Server, ServerResponse } from 'node:http';
import { AddressInfo, Socket } from 'node:net';

/**
 * A controllable stand-in for ClickHouse, on loopback only: an HTTP proxy in
 * front of the run's real server that can be switched between
 *
 *   forward  every request goes to the real server and its answer comes back
 *   refuse   the port is closed and open connections are reset (a stopped server)
 *   hang     requests are read and never answered (a stuck server); requests
 *            hung this way stay hung after a switch, until the client gives up
 *   error    queries are answered 500 with `X-ClickHouse-Exception-Code` and a
 *            ClickHouse-shaped body (241 MEMORY_LIMIT_EXCEEDED by default, a
 *            transient error; or e.g. 60 UNKNOWN_TABLE, a permanent one), while
 *            /ping still answers: the server is up, the query fails
 *   gateway  queries are answered 502 with an empty body, as a proxy in front
 *            of ClickHouse would (or a request refused before it is read);
 *            /ping still answers, unless `{ pings: true }` (a proxy whose
 *            ClickHouse is gone answers its pings the same way)
 *
 * and counts TCP connections and HTTP requests (inserts, pings, pending).
 */

export type FakeClickHouseMode = 'forward' | 'refuse' | 'hang' | 'error' | 'gateway';

export interface ModeOptions {
  /** `error` mode: the ClickHouse code of the answers (241 unless given). */
  code?: number;
  /** `gateway` mode: answer /ping with the empty 502 as well. */
  pings?: boolean;
}

export interface FakeClickHouseCounts {
  /** TCP connections accepted since start. */
  connections: number;
  /** HTTP requests received since start, of which inserts and pings. */
  requests: number;
  inserts: number;
  pings: number;
  /** Requests received and not (yet) answered whose connection is still open. */
  pending: number;
  /** Requests answered with an error in `error` mode. */
  errors: number;
}

const ERROR_TYPES: Record<number, { type: string; message: string }> = {
  60: { type: 'UNKNOWN_TABLE', message: 'Table tracing.spans does not exist.' },
  241: {
    type: 'MEMORY_LIMIT_EXCEEDED',
    message: 'Memory limit (total) exceeded: would use 9.31 GiB (attempt to allocate chunk of 4194304 bytes), maximum: 9.31 GiB.',
  },
};

/** Connection-scoped headers a proxy must not pass on. */
const HOP_BY_HOP = ['connection', 'keep-alive', 'transfer-encoding', 'proxy-connection', 'upgrade'];

function endToEnd(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const copy = { ...headers };
  for (const name of HOP_BY_HOP) delete copy[name];
  return copy;
}

export class FakeClickHouse {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private readonly open = new Set<ServerResponse>();
  private readonly agent = new Agent({ keepAlive: true });
  private currentMode: FakeClickHouseMode = 'forward';
  private errorCode = 241;
  private gatewayPings = false;
  private port = 0;
  private readonly counts: Omit<FakeClickHouseCounts, 'pending'> = { connections: 0, requests: 0, inserts: 0, pings: 0, errors: 0 };

  private constructor(private readonly upstream: URL | null) {
    this.server = createServer((req, res) => this.handle(req, res));
    this.server.on('connection', (socket: Socket) => {
      this.counts.connections += 1;
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
  }

  /** Starts listening on 127.0.0.1; `upstream` is the real ClickHouse (needed for `forward`). */
  static async start(upstream: string | null, mode: FakeClickHouseMode = 'forward', options: ModeOptions = {}): Promise<FakeClickHouse> {
    const fake = new FakeClickHouse(upstream ? new URL(upstream) : null);
    await fake.listen();
    try {
      await fake.setMode(mode, options);
    } catch (error) {
      await fake.close();
      throw error;
    }
    return fake;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get mode(): FakeClickHouseMode {
    return this.currentMode;
  }

  stats(): FakeClickHouseCounts {
    return { ...this.counts, pending: this.open.size };
  }

  async setMode(mode: FakeClickHouseMode, options: ModeOptions = {}): Promise<void> {
    if (mode === 'forward' && !this.upstream) throw new Error('FakeClickHouse: forward needs an upstream server');
    if (mode === 'error') this.errorCode = options.code ?? 241;
    this.gatewayPings = mode === 'gateway' && options.pings === true;
    const wasRefusing = this.currentMode === 'refuse';
    this.currentMode = mode;
    if (mode === 'refuse' && !wasRefusing) {
      const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
      for (const socket of this.sockets) socket.destroy();
      await closed;
    } else if (mode !== 'refuse' && wasRefusing) {
      await this.listen();
    }
  }

  /** Stops listening, drops every connection (hung requests included). */
  async close(): Promise<void> {
    const closed = this.server.listening ? new Promise<void>((resolve) => this.server.close(() => resolve())) : Promise.resolve();
    for (const socket of this.sockets) socket.destroy();
    this.agent.destroy();
    await closed;
  }

  /** The same port again after `refuse`, so clients that know the URL reconnect. */
  private listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.port, '127.0.0.1', () => {
        this.server.off('error', reject);
        this.port = (this.server.address() as AddressInfo).port;
        resolve();
      });
    });
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    this.counts.requests += 1;
    const url = new URL(req.url ?? '/', 'http://fake');
    const isPing = url.pathname === '/ping';
    if (isPing) this.counts.pings += 1;
    if (/^\s*INSERT\b/i.test(url.searchParams.get('query') ?? '')) this.counts.inserts += 1;

    this.open.add(res);
    res.on('close', () => this.open.delete(res));

    switch (this.currentMode) {
      case 'hang':
        req.resume();
        return;
      case 'error':
        if (isPing) return this.forwardOrAnswerPing(req, res);
        return this.answerError(req, res);
      case 'gateway':
        if (isPing && !this.gatewayPings) return this.forwardOrAnswerPing(req, res);
        req.resume();
        req.on('end', () => {
          this.counts.errors += 1;
          res.writeHead(502).end();
        });
        return;
      case 'forward':
        return this.forward(req, res);
      case 'refuse':
        // A request that raced the switch: reset it as a stopped server would.
        res.destroy();
        return;
    }
  }

  private forwardOrAnswerPing(req: IncomingMessage, res: ServerResponse): void {
    if (this.upstream) return this.forward(req, res);
    req.resume();
    res.writeHead(200, { 'Content-Type': 'text/html; charset=UTF-8' }).end('Ok.\n');
  }

  private answerError(req: IncomingMessage, res: ServerResponse): void {
    const code = this.errorCode;
    const { type, message } = ERROR_TYPES[code] ?? { type: 'UNKNOWN_EXCEPTION', message: 'Fake failure.' };
    // Answer once the body is in, as ClickHouse does, so the client is not cut off mid-upload.
    req.resume();
    req.on('end', () => {
      this.counts.errors += 1;
      res
        .writeHead(500, {
          'Content-Type': 'text/plain; charset=UTF-8',
          'X-ClickHouse-Exception-Code': String(code),
          'X-ClickHouse-Server-Display-Name': 'fake-clickhouse',
        })
        .end(`Code: ${code}. DB::Exception: ${message} (${type}) (version 25.8.1.1 (official build))\n`);
    });
  }

  private forward(req: IncomingMessage, res: ServerResponse): void {
    const upstream = this.upstream!;
    const outgoing = httpRequest(
      {
        host: upstream.hostname,
        port: upstream.port || 80,
        method: req.method,
        path: req.url,
        headers: { ...endToEnd(req.headers), host: upstream.host },
        agent: this.agent,
      },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, endToEnd(answer.headers));
        answer.pipe(res);
        answer.on('error', () => res.destroy());
      },
    );
    outgoing.on('error', () => res.destroy());
    res.on('close', () => {
      if (!res.writableFinished) outgoing.destroy();
    });
    req.pipe(outgoing);
  }
}

/**
 * Polls `probe` until it returns something truthy and returns that; fails
 * naming `what` if `timeoutMs` passes first. For waiting on background work
 * (flushes, breaker changes), never for asserting how fast it was.
 */
export async function eventually<T>(what: string, probe: () => Promise<T> | T, timeoutMs = 10_000, everyMs = 25): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value) return value as NonNullable<T>;
      last = value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last: ${last instanceof Error ? last.message : JSON.stringify(last)}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}
