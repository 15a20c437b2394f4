import { Global, Inject, Logger, Module, OnApplicationShutdown } from '@nestjs/common';
import { Kysely } from 'kysely';
import { Pool } from 'pg';
import { AppConfig } from '../../config/app-config';
import { APP_CONFIG } from '../../config/config.module';
import { DB } from './database';
import { resolvePostgres, ResolvedPostgres } from './local-postgres';
import { PG_POOL, KYSELY } from './postgres.tokens';
import { createKysely, createPool } from './postgres-pool';
import { migrateToLatest } from './postgres-migrator';
import { PostgresObservabilityDao } from './postgres-observability.dao';
import { PostgresTracingDao } from './postgres-tracing.dao';

const RESOLVED_POSTGRES = Symbol('RESOLVED_POSTGRES');

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
      inject: [APP_CONFIG, RESOLVED_POSTGRES],
      useFactory: (config: AppConfig, server: ResolvedPostgres) => {
        const pool = createPool(server.url, config.postgres.poolMax, {
          statementTimeoutMs: config.postgres.statementTimeoutMs,
          clientTimeoutMs: config.postgres.clientTimeoutMs,
        });
        // An idle client's connection can drop (server restart); without a listener that would crash the process.
        pool.on('error', (error) => new Logger('Postgres').warn(`idle connection error: ${error.message}`));
        return pool;
      },
    },
    {
      provide: KYSELY,
      inject: [APP_CONFIG, PG_POOL],
      useFactory: async (config: AppConfig, pool: Pool) => {
        const db = createKysely(pool);
        if (config.postgres.migrateOnStart) {
          const result = await migrateToLatest(db);
          const applied = result.results?.map((r) => r.migrationName) ?? [];
          if (applied.length) new Logger('Postgres').log(`applied migrations: ${applied.join(', ')}`);
        }
        return db;
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
