import { Global, Inject, Logger, Module, OnApplicationShutdown } from '@nestjs/common';
import { Kysely } from 'kysely';
import { Pool } from 'pg';
import { Registry } from 'prom-client';
import { AppConfig } from '../../config/app-config';
import { APP_CONFIG } from '../../config/config.module';
import { METRICS_REGISTRY } from '../../metrics/metrics.tokens';
import { DB } from './database';
import { resolvePostgres, ResolvedPostgres } from './local-postgres';
import { PG_POOL, KYSELY } from './postgres.tokens';
import { createKysely, createPool } from './postgres-pool';
import { registerPoolMetrics } from './postgres-metrics';
import { migrateToLatest } from './postgres-migrator';
import { PostgresObservabilityDao } from './postgres-observability.dao';
import { PostgresTracingDao } from './postgres-tracing.dao';

const RESOLVED_POSTGRES = Symbol('RESOLVED_POSTGRES');

/**
 * Migrations are schema work, not requests: they run on a connection of their
 * own without the API's statement and client timeouts. A migration may take
 * longer than a request may (an index on a large table), and a second replica
 * starting beside the first waits on Kysely's migration lock until the first
 * has finished, however long that takes.
 */
async function migrateOnStart(url: string): Promise<void> {
  const db = createKysely(createPool(url, 1));
  try {
    const result = await migrateToLatest(db);
    const applied = result.results?.map((r) => r.migrationName) ?? [];
    if (applied.length) new Logger('Postgres').log(`applied migrations: ${applied.join(', ')}`);
  } finally {
    await db.destroy();
  }
}

/**
 * The system of record. Resolves the server (DATABASE_URL or the embedded
 * default), migrates it to latest when MIGRATE_ON_START is on, and owns the
 * pool's lifetime.
 */
@Global()
@Module({
  providers: [
    {
      provide: RESOLVED_POSTGRES,
      inject: [APP_CONFIG],
      useFactory: (config: AppConfig) => resolvePostgres(config.postgres, (m) => new Logger('Postgres').log(m)),
    },
    {
      provide: PG_POOL,
      inject: [APP_CONFIG, RESOLVED_POSTGRES, METRICS_REGISTRY],
      useFactory: (config: AppConfig, server: ResolvedPostgres, registry: Registry) => {
        const logger = new Logger('Postgres');
        const pool = createPool(server.url, config.postgres.poolMax, {
          statementTimeoutMs: config.postgres.statementTimeoutMs,
          clientTimeoutMs: config.postgres.clientTimeoutMs,
          onConnectionLost: (error) => logger.warn(`connection lost: ${error.message}`),
        });
        registerPoolMetrics(pool, registry);
        return pool;
      },
    },
    {
      provide: KYSELY,
      inject: [APP_CONFIG, RESOLVED_POSTGRES, PG_POOL],
      useFactory: async (config: AppConfig, server: ResolvedPostgres, pool: Pool) => {
        if (config.postgres.migrateOnStart) await migrateOnStart(server.url);
        return createKysely(pool);
      },
    },
    PostgresTracingDao,
    PostgresObservabilityDao,
  ],
  exports: [KYSELY, PG_POOL, PostgresTracingDao, PostgresObservabilityDao],
})
export class PostgresModule implements OnApplicationShutdown {
  constructor(
    @Inject(KYSELY) private readonly db: Kysely<DB>,
    @Inject(RESOLVED_POSTGRES) private readonly server: ResolvedPostgres,
  ) {}

  async onApplicationShutdown(): Promise<void> {
    await this.db.destroy();
    await this.server.stop?.();
  }
}
