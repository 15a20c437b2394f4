import 'reflect-metadata';
import { randomUUID } from 'node:crypto';
import { AddressInfo } from 'node:net';
import { ApiKeyService } from '../../../src/auth/api-key.service';
import { createApp } from '../../../src/bootstrap';
import { MIRROR, MirrorRuntime } from '../../../src/dbs/dual-write/mirror.module';
import { SpanInput } from '../../../src/tracing/span';
import { TracingService } from '../../../src/tracing/tracing.service';
import { LoadWindow, timedLoop } from './http-load';
import { tracePool } from './spans';

/**
 * One API instance in its own process, built by createApp() exactly as
 * main.ts builds it, with the env in BENCH_APP_ENV. It listens on a free
 * loopback port and, over IPC, also runs TracingService.createSpans
 * in-process (on traces built beforehand by `traces`), drains the mirror,
 * records its held gaps and reports its stats. Started by the write-path
 * benchmark once per mode (flag off / on with ClickHouse up / down).
 */

export type HostRequest =
  | { id: number; cmd: 'traces'; sizes: number[] }
  | { id: number; cmd: 'inproc'; spans: number; window: LoadWindow; concurrency: number }
  | { id: number; cmd: 'drain'; timeoutMs: number }
  | { id: number; cmd: 'record-gaps' }
  | { id: number; cmd: 'stats' }
  | { id: number; cmd: 'close' };

export interface HostReady {
  ready: true;
  url: string;
  apiKey: string;
  projectId: string;
  pid: number;
}

async function main(): Promise<void> {
  const env = JSON.parse(process.env.BENCH_APP_ENV ?? '{}') as Record<string, string>;
  const app = await createApp(env);
  await app.listen(0, '127.0.0.1');
  const { port } = app.getHttpServer().address() as AddressInfo;
  const projectId = randomUUID();
  const { key } = await app.get(ApiKeyService).create(projectId);
  const tracing = app.get(TracingService);
  const runtime = app.get<MirrorRuntime | null>(MIRROR);
  /** Per trace size, the pool createSpans draws from: built before any measurement, not in this process's CPU per call. */
  const traces = new Map<number, () => SpanInput[]>();

  const answer = async (request: HostRequest): Promise<unknown> => {
    switch (request.cmd) {
      case 'traces':
        for (const size of request.sizes) if (!traces.has(size)) traces.set(size, tracePool(size));
        return {};
      case 'inproc': {
        const next = traces.get(request.spans);
        if (!next) throw new Error(`no traces of ${request.spans} spans: ask for them with the traces command first`);
        return await timedLoop(request.window, request.concurrency, () => {
          const spans = next();
          return async () => void (await tracing.createSpans(projectId, spans));
        });
      }
      case 'drain': {
        if (runtime) {
          let timer: NodeJS.Timeout | undefined;
          const timeout = new Promise((resolve) => (timer = setTimeout(resolve, request.timeoutMs)));
          await Promise.race([runtime.writer.drain(), timeout]).finally(() => clearTimeout(timer));
        }
        return { stats: runtime?.writer.stats() ?? null };
      }
      case 'record-gaps': {
        // With ClickHouse down, rows turned away at the queue's bound are held up to a flush interval before
        // their gap record is written to Postgres. Recorded now, and awaited, as drain() would before it
        // resolves (which, ClickHouse down, it never does).
        await runtime?.writer.recordHeldGaps();
        return {};
      }
      case 'stats':
        return { stats: runtime?.writer.stats() ?? null, rss: process.memoryUsage().rss };
      case 'close':
        await app.close();
        setImmediate(() => process.exit(0));
        return {};
    }
  };

  process.on('message', (request: HostRequest) => {
    answer(request).then(
      (result) => process.send!({ id: request.id, ...(result as object) }),
      (error: unknown) => process.send!({ id: request.id, error: (error as Error)?.stack ?? String(error) }),
    );
  });
  process.on('disconnect', () => process.exit(0));
  const ready: HostReady = { ready: true, url: `http://127.0.0.1:${port}`, apiKey: key, projectId, pid: process.pid };
  process.send!(ready);
}

main().catch((error: unknown) => {
  process.stderr.write(`app host failed: ${(error as Error)?.stack ?? String(error)}\n`);
  process.exit(1);
});
