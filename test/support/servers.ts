import { execFile } from 'node:child_process';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startLocalClickHouse } from '../../src/dbs/clickhouse/local-clickhouse';
import { startLocalPostgres } from '../../src/dbs/postgres/local-postgres';

/**
 * The one server resolver for tests: an env URL when given, else
 * testcontainers when a Docker daemon answers, else the embedded real servers.
 */

export interface ProvidedServer {
  url: string;
  how: 'env' | 'testcontainers' | 'embedded';
  stop: () => Promise<void>;
}

export async function dockerAnswers(): Promise<boolean> {
  return new Promise((resolve) => {
    execFile('docker', ['info', '--format', '{{.ServerVersion}}'], { timeout: 5_000 }, (error, stdout) =>
      resolve(!error && stdout.trim().length > 0),
    );
  });
}

export async function providePostgres(): Promise<ProvidedServer> {
  const fromEnv = process.env.TEST_DATABASE_URL;
  if (fromEnv) return { url: fromEnv, how: 'env', stop: async () => undefined };
  if (await dockerAnswers()) {
    const { PostgreSqlContainer } = await import('@testcontainers/postgresql');
    const container = await new PostgreSqlContainer('postgres:17-alpine').start();
    return { url: container.getConnectionUri(), how: 'testcontainers', stop: async () => void (await container.stop()) };
  }
  const dataDir = await mkdtemp(join(tmpdir(), 'tracing-test-pg-'));
  // mkdtemp makes it 0700; PostgreSQL runs as the `postgres` user when we are root.
  await chmod(dataDir, 0o755);
  const port = 20000 + Math.floor(Math.random() * 20000);
  const server = await startLocalPostgres({ port, dataDir: join(dataDir, 'data'), database: 'postgres' });
  return { url: server.url, how: 'embedded', stop: async () => server.stop?.({ evenIfInUse: true }) };
}

export async function provideClickHouse(): Promise<ProvidedServer> {
  const fromEnv = process.env.TEST_CLICKHOUSE_URL;
  if (fromEnv) return { url: fromEnv, how: 'env', stop: async () => undefined };
  if (await dockerAnswers()) {
    const { ClickHouseContainer } = await import('@testcontainers/clickhouse');
    const container = await new ClickHouseContainer('clickhouse/clickhouse-server:25.8').start();
    const url = new URL(container.getHttpUrl());
    url.username = container.getUsername();
    url.password = container.getPassword();
    // No path: each spec picks its own database (see clickhouse.ts).
    const withCredentials = url.toString().replace(/\/$/, '');
    return { url: withCredentials, how: 'testcontainers', stop: async () => void (await container.stop()) };
  }
  const dataDir = await mkdtemp(join(tmpdir(), 'tracing-test-ch-'));
  const server = await startLocalClickHouse({ port: 0, dataDir });
  return {
    url: server.url,
    how: 'embedded',
    stop: async () => {
      await server.stop?.();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}
