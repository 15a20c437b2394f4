import 'reflect-metadata';
import type { Server } from 'node:http';
import { Logger as NestLogger } from '@nestjs/common';
import type { NestExpressApplication } from '@nestjs/platform-express';
import { Logger, PinoLogger } from 'nestjs-pino';
import { symbols } from 'pino';
import { createApp, discardBufferedLogs } from './bootstrap';
import { AppConfig, parseConfig } from './config/app-config';
import { OperatorError } from './config/operator-error';
import { APP_CONFIG } from './config/config.module';
import { MIRROR, MirrorRuntime } from './dbs/dual-write/mirror.module';
import { InFlightSessions } from './dbs/postgres/in-flight-sessions';
import { ShutdownState } from './health/shutdown-state';
import { errorText } from './error-text';
import { within } from './within';

/** After ending the sessions of requests it gave up on, how long shutdown lets those requests answer (503). */
const ANSWER_GRACE_MS = 1_000;

/**
 * Graceful shutdown: on SIGTERM/SIGINT /health turns 503; after
 * SHUTDOWN_DELAY_MS (0 by default) stop accepting connections, let
 * in-flight requests finish (up to SHUTDOWN_TIMEOUT_MS), end the Postgres
 * sessions of any still running (their transactions roll back and they
 * answer 503; see InFlightSessions), close the connections, then close the
 * app, which waits for mirrored writes to settle, flushes the mirror and
 * closes the pools in Nest's shutdown hooks. Exits 0 only when nothing was
 * lost on the way: rows the mirror could neither send nor record as gaps, or
 * a shutdown step that failed, end it with 1 and an error line. (Committed
 * rows the mirror could not even build records of, a fault of its mappers,
 * are counted in mirror_record_failures_total and logged when it happens,
 * for verify to find; they do not change the exit code.)
 */
async function main(): Promise<void> {
  // Fail fast with a readable message before Nest starts (it would wrap the error in a DI stack trace).
  parseConfig();
  const app = await createApp();
  const config = app.get<AppConfig>(APP_CONFIG);
  const logger = app.get(Logger);
  try {
    await listen(app, config, logger);
  } catch (error) {
    // process.exit would only signal the embedded Postgres to stop; closing waits for it, ends the pools and the mirror.
    await app.close().catch((closeError: Error) => logger.warn(`could not close the app after the failed start: ${closeError.message}`, 'Main'));
    throw error;
  }
  // The bound port, which PORT=0 leaves to the system to choose.
  const bound = (app.getHttpServer() as Server).address();
  const port = bound !== null && typeof bound === 'object' ? bound.port : config.http.port;
  logger.log(`tracing-api listening on http://${config.http.host}:${port} (docs at /docs, clickhouse mirror ${config.clickhouse.enabled ? 'on' : 'off'})`, 'Main');

  let stopping = false;
  const stop = async (signal: string) => {
    // One Ctrl-C under `npm start` arrives twice (from the terminal, and forwarded by npm); a signal during the
    // drain must not cut it short (the default action would exit at once, the mirror's last rows unflushed).
    // The drain is bounded by SHUTDOWN_TIMEOUT_MS and MIRROR_SHUTDOWN_DEADLINE_MS; SIGKILL is the way to stop sooner.
    if (stopping) {
      return logger.log(`${signal} received again (one Ctrl-C under npm arrives twice: from the terminal and forwarded by npm): already shutting down`, 'Main');
    }
    stopping = true;
    app.get(ShutdownState).begin();
    // Rows the mirror loses from here on are told in the last line and the exit code: once the listener
    // closes (below), no scrape of mirror_rows_lost_total can see them.
    const writer = app.get<MirrorRuntime | null>(MIRROR)?.writer;
    const lostBefore = writer?.stats().rowsLost ?? 0;
    const server = app.getHttpServer() as Server;
    // Keep-alive clients would otherwise hold their sockets open until the idle timeout. Ahead of Express's own
    // listener: it answers some requests (a path no route serves, /docs) before returning, and a header set
    // after that throws ERR_HTTP_HEADERS_SENT, out of any handler: the process would crash mid-drain.
    server.prependListener('request', (_req, res) => {
      if (!res.headersSent) res.setHeader('Connection', 'close');
    });
    const delayMs = config.http.shutdownDelayMs;
    if (delayMs > 0) {
      // Still accepting: the load balancer is told by /health, and stops routing here within this delay.
      logger.log({ delayMs }, `${signal} received: /health answers 503; serving on for ${delayMs} ms (SHUTDOWN_DELAY_MS), then draining`, 'Main');
      await new Promise((elapsed) => setTimeout(elapsed, delayMs));
    }
    logger.log(`${delayMs > 0 ? 'SHUTDOWN_DELAY_MS elapsed' : `${signal} received`}: draining in-flight requests`, 'Main');
    const drained = new Promise<boolean>((resolve) => server.close(() => resolve(true)));
    const finished = await within(drained, config.http.shutdownTimeoutMs, () => false);
    // Sessions still lent out belong to requests given up on, or to requests whose clients hung up
    // (the server counts connections, not handlers): nothing they write now would reach anyone.
    const ended = await app
      .get(InFlightSessions)
      .end()
      .catch((error: Error) => (logger.warn(`could not end in-flight Postgres sessions: ${error.message}`, 'Main'), 0));
    if (ended > 0) {
      logger.warn(
        { endedSessions: ended, shutdownTimeoutMs: config.http.shutdownTimeoutMs },
        `${finished ? 'requests whose clients hung up' : `requests still running after ${config.http.shutdownTimeoutMs} ms`}: ended their ${ended} Postgres sessions (their transactions roll back)`,
        'Main',
      );
      if (!finished) await within(drained, ANSWER_GRACE_MS, () => false);
    }
    server.closeAllConnections();
    try {
      await app.close();
    } catch (error) {
      logger.error({ error: errorText(error) }, 'shutdown failed; the Postgres pools and embedded servers may not have closed', 'Main');
      return exitOnceLogged(1);
    }
    const lostRows = (writer?.stats().rowsLost ?? 0) - lostBefore;
    if (lostRows > 0) {
      logger.error(
        { lostRows },
        'shut down, but the mirror lost rows: neither sent to ClickHouse nor recorded as gaps (the error lines above have their ranges); run `npm run verify -- --repair`',
        'Main',
      );
      return exitOnceLogged(1);
    }
    logger.log('shut down cleanly', 'Main');
    return exitOnceLogged(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

/** How long the last log lines may take to reach stdout before the process exits all the same. */
const LOG_FLUSH_MS = 2_000;

/**
 * Exits once the log has reached stdout. pino writes asynchronously; at exit
 * it writes synchronously only what waits behind a write still in flight,
 * which the thread pool may finish after it: the last line (how shutdown
 * ended, lostRows) came out before the line before it. Its flush() does not
 * wait (it answers at once for a stream that buffers nothing), so the stream
 * is ended: it closes once every line is written (stdout itself stays open).
 * Every line goes to this one stream: the app gives nestjs-pino one logger
 * for request lines and the rest (app.module.ts).
 */
async function exitOnceLogged(code: number): Promise<void> {
  const root = PinoLogger.root as unknown as Record<symbol, unknown> | undefined;
  const stream = root?.[symbols.streamSym] as { end?: () => void; once?: (event: 'close', listener: () => void) => unknown; destroyed?: boolean } | undefined;
  if (stream?.end && stream.once && !stream.destroyed) {
    const closed = new Promise<void>((done) => stream.once!('close', done));
    stream.end();
    await within(closed, LOG_FLUSH_MS, () => undefined);
  }
  process.exit(code);
}

/**
 * Nest logs "Nest application successfully started" once the app is
 * initialised, before the port is bound, and logs a failed bind as a raw
 * error line of its own, beside the one-line refusal main prints. So its lines
 * are held until the port is bound: printed then, dropped if binding fails.
 * A failure before binding (a lifecycle hook) keeps them, as its context.
 */
async function listen(app: NestExpressApplication, config: AppConfig, logger: Logger): Promise<void> {
  NestLogger.attachBuffer();
  try {
    await app.listen(config.http.port, config.http.host);
  } catch (error) {
    const bind = error as NodeJS.ErrnoException;
    if (bind?.syscall === 'listen') discardBufferedLogs(logger);
    const where = `${config.http.host}:${config.http.port}`;
    if (bind?.code === 'EADDRINUSE') throw new OperatorError(`${where} is already in use: stop what listens there, or set PORT (or HOST)`);
    if (bind?.code === 'EACCES') throw new OperatorError(`${where} needs privileges this process lacks (a port below 1024?): set PORT`);
    if (bind?.code === 'EADDRNOTAVAIL') throw new OperatorError(`${where}: HOST is not an address of this machine: set HOST`);
    throw error;
  } finally {
    app.flushLogs();
  }
}

main().catch((error: unknown) => {
  if (error instanceof OperatorError) {
    process.stderr.write(`tracing-api did not start: ${error.message}\n`);
  } else {
    process.stderr.write(`tracing-api failed to start: ${(error as Error)?.stack ?? String(error)}\n`);
  }
  process.exit(1);
});
