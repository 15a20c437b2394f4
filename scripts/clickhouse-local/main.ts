import { resolve } from 'node:path';
import { parseConfig } from '../../src/config/app-config';
import { parseFlags } from '../cli/flags';
import { runCli, UsageError } from '../cli/run-cli';
import { clickHouseAnswers, LOCAL_HOLDERS_PATH } from '../../src/dbs/clickhouse/local-clickhouse';
import { serverUrl, startChdbHttpServer } from './chdb-http-server';
import { ServerHolders } from './server-holders';

/**
 * `npm run clickhouse:local`: a local ClickHouse HTTP endpoint over chdb, on
 * EMBEDDED_CLICKHOUSE_PORT (18123) with its data in
 * ${EMBEDDED_DATA_DIR:-.data}/clickhouse. The server resolver also runs this
 * as a child process, with --port, --data-dir and --exit-with-parent, and
 * waits for the "CLICKHOUSE_LOCAL_READY <url>" line on stdout.
 */

// The official server image runs in UTC whatever the host's zone; the engine reads TZ when it starts.
process.env.TZ = 'UTC';

const USAGE = `usage: npm run clickhouse:local -- [--port N] [--host H] [--data-dir DIR] [--exit-with-parent]

  --port N            listen on this port, 0 for any free one (default EMBEDDED_CLICKHOUSE_PORT, 18123)
  --host H            listen on this address (default 127.0.0.1)
  --data-dir DIR      keep the data here (default \${EMBEDDED_DATA_DIR:-.data}/clickhouse)
  --exit-with-parent  stop when the process that started this one exits, and
                      every process that joined the server since has ended

Prints "CLICKHOUSE_LOCAL_READY <url>" on stdout once it answers, and runs
until SIGINT or SIGTERM.`;

interface CliOptions {
  port: number;
  host: string;
  dataDir: string;
  exitWithParent: boolean;
}

function parseCli(args: string[]): CliOptions {
  const flags = parseFlags(args, ['--port', '--host', '--data-dir'], ['--exit-with-parent']);
  const port = flags.values.get('--port');
  if (port !== undefined && (!/^\d+$/.test(port) || Number(port) > 65535)) {
    throw new UsageError(`--port must be a whole number from 0 to 65535, got "${port}"`);
  }
  // The defaults come from the validated environment only when needed: the server resolver passes both.
  const embedded = () => parseConfig().clickhouse.embedded;
  return {
    port: port !== undefined ? Number(port) : embedded().port,
    host: flags.values.get('--host') ?? '127.0.0.1',
    dataDir: flags.values.get('--data-dir') ?? embedded().dataDir,
    exitWithParent: flags.switches.has('--exit-with-parent'),
  };
}

/** Runs until a signal or the parent's exit stops the server; runCli then exits 0 (1 if it did not stop cleanly). */
runCli(USAGE, async (args, log) => {
  const options = parseCli(args);
  const dataDir = resolve(options.dataDir);
  const holders = new ServerHolders();
  let server: Awaited<ReturnType<typeof startChdbHttpServer>>;
  try {
    server = await startChdbHttpServer({
      port: options.port,
      host: options.host,
      dataDir,
      log: (message) => log(`local ClickHouse: ${message}`),
      ownPaths: { [LOCAL_HOLDERS_PATH]: holders.handle },
    });
  } catch (error) {
    // The server resolver tells a taken port from other failures by the code (EADDRINUSE) in this line.
    const code = (error as { code?: unknown }).code;
    const url = serverUrl(options.host, options.port);
    if (code === 'EADDRINUSE' && (await clickHouseAnswers(url))) {
      throw new Error(`local ClickHouse failed to start (EADDRINUSE): a ClickHouse already answers at ${url} (one that another process started?); use it, or give another --port`);
    }
    throw new Error(`local ClickHouse failed to start${typeof code === 'string' ? ` (${code})` : ''}: ${error instanceof Error ? error.message : String(error)}`);
  }
  process.stdout.write(`CLICKHOUSE_LOCAL_READY ${server.url} (ClickHouse ${server.version} via chdb, data in ${dataDir})\n`);

  await new Promise<void>((stopped, failed) => {
    let stopping = false;
    const stop = (why: string) => {
      if (stopping) return;
      stopping = true;
      log(`local ClickHouse stopping (${why})`);
      server.close().then(
        () => {
          log('local ClickHouse stopped');
          stopped();
        },
        (error: unknown) => failed(new Error(`local ClickHouse did not stop cleanly: ${String(error)}`)),
      );
    };
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGTERM', () => stop('SIGTERM'));
    if (options.exitWithParent) {
      let parentGone = false;
      const parentExited = () => {
        if (parentGone) return;
        parentGone = true;
        // Our stdout and stderr are the parent's pipes: with it gone, a log line would fail with EPIPE. (The
        // parent says itself when it leaves the server running for others.)
        for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
        const joined = holders.pids().length > 0;
        void holders.none().then(() => stop(joined ? 'the processes that joined it have ended' : 'parent exited'));
      };
      // The parent holds our stdin pipe open; it closes when the parent dies, however it dies, or when it
      // stops using the server while others still do (see LOCAL_HOLDERS_PATH).
      process.stdin.on('end', parentExited);
      process.stdin.on('error', parentExited);
      process.stdin.resume();
      const parent = process.ppid;
      setInterval(() => process.ppid !== parent && parentExited(), 1_000).unref();
    }
  });
});
