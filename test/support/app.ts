import { INestApplication } from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import { AddressInfo } from 'node:net';
import { ApiKeyService } from '../../src/auth/api-key.service';
import { createApp } from '../../src/bootstrap';
import { MIRROR, MirrorRuntime } from '../../src/dbs/dual-write/mirror.module';
import { dropClickHouseDatabase, testClickHouseConfig } from './clickhouse';
import { createTestDatabase, TestDatabase } from './postgres';

export interface TestApp {
  app: INestApplication;
  url: string;
  database: TestDatabase;
  apiKey: string;
  projectId: string;
  createApiKey(projectId?: string): Promise<{ key: string; projectId: string }>;
  /** The mirror's runtime (writer, gaps) when USE_CLICKHOUSE is on, else null. */
  mirror: MirrorRuntime | null;
  close(): Promise<void>;
}

export interface TestAppOptions {
  /** Turn the mirror on, against the run's ClickHouse server with a fresh database for this app. */
  clickhouse?: boolean;
  /**
   * With the mirror on, the app's ClickHouse DDL has had its first try before
   * this resolves (default true): the API applies it in the background and
   * does not wait for it at startup, and a spec that starts healthy and then
   * injects a fault needs the tables there, as a long-running API has them.
   * False for a spec about the start itself.
   */
  awaitSchema?: boolean;
}

/**
 * The real app, built as production builds it, on a fresh Postgres database
 * and a free port, with one project and its API key ready.
 */
export async function createTestApp(env: Record<string, string> = {}, options: TestAppOptions = {}): Promise<TestApp> {
  const database = await createTestDatabase();
  const clickhouse = options.clickhouse ? testClickHouseConfig(database.name) : null;
  const app = await createApp({
    DATABASE_URL: database.url,
    LOG_LEVEL: 'silent',
    USE_CLICKHOUSE: 'false',
    MIGRATE_ON_START: 'false',
    ...(clickhouse && {
      USE_CLICKHOUSE: 'true',
      CLICKHOUSE_URL: clickhouse.url,
      CLICKHOUSE_USER: clickhouse.config.user,
      CLICKHOUSE_PASSWORD: clickhouse.config.password,
      CLICKHOUSE_DATABASE: database.name,
    }),
    ...env,
  });
  await app.listen(0, '127.0.0.1');
  const mirror = app.get<MirrorRuntime | null>(MIRROR);
  if (options.awaitSchema !== false) await mirror?.schema.ensure();
  const { port } = (app.getHttpServer().address() as AddressInfo);
  const apiKeys = app.get(ApiKeyService);
  const createApiKey = async (projectId: string = randomUUID()) => {
    const created = await apiKeys.create(projectId);
    return { key: created.key, projectId };
  };
  const first = await createApiKey();
  return {
    app,
    url: `http://127.0.0.1:${port}`,
    database,
    apiKey: first.key,
    projectId: first.projectId,
    createApiKey,
    mirror,
    close: async () => {
      await app.close();
      await database.drop();
      if (clickhouse) await dropClickHouseDatabase(clickhouse.config, clickhouse.url);
    },
  };
}
