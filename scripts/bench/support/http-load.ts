import { Agent, request } from 'node:http';
import { performance } from 'node:perf_hooks';

/**
 * A minimal keep-alive HTTP client for load: bodies are built before the
 * clock starts, and each latency runs from the request's start to the last
 * byte of its answer.
 */

export interface Answer {
  status: number;
  ms: number;
  body: string;
}

/** An idle socket's lifetime when the server announces none; announced ones (Node's 5 s) are shorter. */
const IDLE_SOCKET_MS = 30_000;

export class ApiClient {
  private readonly agent: Agent;
  private readonly base: URL;

  constructor(
    url: string,
    private readonly apiKey: string,
    concurrency = 16,
  ) {
    this.base = new URL(url);
    // Node 20's agent closes an idle socket a second before the server's announced keep-alive timeout only
    // when it has a timeout of its own; without one it keeps the socket until the server closes it, and a
    // request written just as the server does fails with ECONNRESET (likely what failed mirror-lag once, 12 s into its open loop).
    this.agent = new Agent({ keepAlive: true, maxSockets: concurrency, timeout: IDLE_SOCKET_MS });
  }

  send(method: string, path: string, body?: Buffer): Promise<Answer> {
    return new Promise((resolve, reject) => {
      const started = performance.now();
      const req = request(
        {
          host: this.base.hostname,
          port: this.base.port,
          method,
          path,
          agent: this.agent,
          headers: {
            authorization: `ApiKey ${this.apiKey}`,
            ...(body && { 'content-type': 'application/json', 'content-length': body.length }),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, ms: performance.now() - started, body: Buffer.concat(chunks).toString('utf8') }));
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

/**
 * How long a timed loop runs: `leadMs` of load first, then `durationMs` whose
 * calls are timed, then `tailMs` more. The load before and after keeps the
 * work a call sets going in the background (the mirror's interval flushes)
 * falling inside the timed window as often as under a steady load, not
 * after it, when nothing is timed.
 */
export interface LoadWindow {
  leadMs: number;
  durationMs: number;
  tailMs: number;
}

/**
 * `concurrency` workers call `next()` for a call to make (built outside the
 * clock) and time it, through the window; returns the latencies of the calls
 * started inside its timed part, and how many calls ran in all.
 */
export async function timedLoop(window: LoadWindow, concurrency: number, next: () => () => Promise<void>): Promise<{ latencies: number[]; calls: number }> {
  const latencies: number[] = [];
  let calls = 0;
  const from = performance.now() + window.leadMs;
  const to = from + window.durationMs;
  const until = to + window.tailMs;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < until) {
        const call = next();
        const started = performance.now();
        await call();
        calls++;
        if (started >= from && started < to) latencies.push(performance.now() - started);
      }
    }),
  );
  return { latencies, calls };
}

/** A POST that must succeed; its latency in ms. */
export async function postOk(client: ApiClient, path: string, body: Buffer): Promise<number> {
  const answer = await client.send('POST', path, body);
  if (answer.status < 200 || answer.status >= 300) throw new Error(`POST ${path} answered ${answer.status}: ${answer.body.slice(0, 300)}`);
  return answer.ms;
}

/**
 * Open loop at a fixed rate: starts `fire(i)` every 1/rate seconds for
 * `durationMs` whether or not earlier calls have finished (as independent
 * clients would), correcting timer drift; resolves when all have settled.
 */
export async function openLoop(ratePerSecond: number, durationMs: number, fire: (i: number) => Promise<void>): Promise<void> {
  const interval = 1000 / ratePerSecond;
  const total = Math.floor((durationMs / 1000) * ratePerSecond);
  const started = performance.now();
  const inFlight: Array<Promise<void>> = [];
  let failure: { error: unknown } | null = null;
  for (let i = 0; i < total && !failure; i++) {
    const due = started + i * interval;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    // Caught at once: a call failing while later ones are still being started must not be an unhandled rejection.
    inFlight.push(fire(i).catch((error: unknown) => void (failure ??= { error })));
  }
  await Promise.all(inFlight);
  if (failure) throw (failure as { error: unknown }).error;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
