import { resolve } from 'node:path';
import { startChdbHttpServer } from './chdb-http-server';

/**
 * `npm run clickhouse:local`: a local ClickHouse HTTP endpoint over chdb, on
 * EMBEDDED_CLICKHOUSE_PORT (18123) with its data in
 * ${EMBEDDED_DATA_DIR:-.data}/clickhouse. The server resolver also runs this
 * as a child process, with --port, --data-dir and --exit-with-parent, and
 * waits for the "CLICKHOUSE_LOCAL_READY <url>" line on stdout.
 */

// The official server image runs in UTC whatever the host's zone; the engine reads TZ when it starts.
process.env.TZ = 'UTC';

interface CliOptions {
  port: number;
  host: string;
  dataDir: string;
  exitWithParent: boolean;
}

function parseCli(argv: string[]): CliOptions {
  const options: CliOptions = {
    port: Number(process.env.EMBEDDED_CLICKHOUSE_PORT || 18123),
    host: '127.0.0.1',
    dataDir: `${process.env.EMBEDDED_DATA_DIR || '.data'}/clickhouse`,
    exitWithParent: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s, 2);
    const value = () => inline ?? argv[++i];
    if (flag === '--port') options.port = Number(value());
    else if (flag === '--host') options.host = value();
    else if (flag === '--data-dir') options.dataDir = value();
    else if (flag === '--exit-with-parent') options.exitWithParent = true;
    else throw new Error(`unknown argument ${argv[i]}; expected --port N, --host H, --data-dir DIR, --exit-with-parent`);
  }
  if (!Number.isInteger(options.port) || options.port < 0 || options.port > 65535) {
    throw new Error(`the port must be a whole number from 0 to 65535, got ${options.port}`);
  }
  return options;
}

async function main(): Promise<void> {
  const options = parseCli(process.argv.slice(2));
  const dataDir = resolve(options.dataDir);
  const server = await startChdbHttpServer({
    port: options.port,
    host: options.host,
    dataDir,
    log: (message) => process.stderr.write(`local ClickHouse: ${message}\n`),
  });
  process.stdout.write(`CLICKHOUSE_LOCAL_READY ${server.url} (ClickHouse ${server.version} via chdb, data in ${dataDir})\n`);

  let stopping = false;
  const stop = (why: string) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`local ClickHouse stopping (${why})\n`);
    server.close().then(
      () => process.exit(0),
      (error: unknown) => {
        process.stderr.write(`local ClickHouse did not stop cleanly: ${String(error)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  if (options.exitWithParent) {
    // The parent holds our stdin pipe open; it closes when the parent dies, however it dies.
    process.stdin.on('end', () => stop('parent exited'));
    process.stdin.on('error', () => stop('parent exited'));
    process.stdin.resume();
    const parent = process.ppid;
    setInterval(() => process.ppid !== parent && stop('parent exited'), 1_000).unref();
  }
}

main().catch((error: unknown) => {
  const code = (error as { code?: unknown }).code;
  process.stderr.write(`local ClickHouse failed to start${typeof code === 'string' ? ` (${code})` : ''}: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
