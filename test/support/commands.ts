import { spawn } from 'node:child_process';
import type { Readable } from 'node:stream';
import { ROOT } from '../../scripts/cli/api-process';

export interface CommandRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `npm run <script> -- <args>` as an operator runs it (tsx over scripts/<script>.ts), with `env` on top. */
export function runCommand(script: 'verify' | 'backfill' | 'migrate' | 'migrate-clickhouse' | 'apikey' | 'load' | 'clickhouse-local/main', args: string[], env: Record<string, string>): Promise<CommandRun> {
  // jest's NODE_OPTIONS (vm modules) is not the commands' business.
  const { NODE_OPTIONS: _jest, ...inherited } = process.env;
  return new Promise((done) => {
    const child = spawn(process.execPath, ['--import', 'tsx', `scripts/${script}.ts`, ...args], { cwd: ROOT, env: { ...inherited, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('close', (code) => done({ code, stdout, stderr }));
  });
}

/**
 * The URL from the local ClickHouse server's "CLICKHOUSE_LOCAL_READY <url>"
 * line on `stdout`; fails with `why()` if `exited` settles first.
 */
export function clickHouseReadyUrl(stdout: Readable, exited: Promise<unknown>, why: () => string): Promise<string> {
  let seen = '';
  return new Promise((ready, failed) => {
    stdout.on('data', (chunk: Buffer) => {
      seen += chunk.toString();
      const line = /^CLICKHOUSE_LOCAL_READY (\S+)/m.exec(seen);
      if (line) ready(line[1]);
    });
    void exited.then(() => failed(new Error(why())));
  });
}

export interface DifferingBucket {
  entity: string;
  projectId: string;
  day: string;
  postgresRows: number;
  clickhouseRows: number;
}

/** The table of differing buckets `npm run verify` prints. */
export function differingBuckets(stdout: string): DifferingBucket[] {
  const rows = [...stdout.matchAll(/^(spans|nodes)\s+([0-9a-f-]{36})\s+(\d{4}-\d{2}-\d{2})\s+(\d+)\s+(\d+)/gm)];
  return rows.map(([, entity, projectId, day, pg, ch]) => ({ entity, projectId, day, postgresRows: Number(pg), clickhouseRows: Number(ch) }));
}

/** The environment that points the API and the commands at a spec's own Postgres database and ClickHouse database. */
export function storesEnv(pg: { url: string }, ch: { url: string; database: string; config: { user: string; password: string } }): Record<string, string> {
  return {
    DATABASE_URL: pg.url,
    CLICKHOUSE_URL: ch.url,
    CLICKHOUSE_USER: ch.config.user,
    CLICKHOUSE_PASSWORD: ch.config.password,
    CLICKHOUSE_DATABASE: ch.database,
  };
}
