import { Global, Inject, Logger, Module, OnApplicationShutdown } from '@nestjs/common';
import { sql } from 'kysely';
import { Pool } from 'pg';
import { Registry } from 'prom-client';
import { AppConfig } from '../../config/app-config';
import { APP_CONFIG } from '../../config/config.module';
import { METRICS_REGISTRY } from '../../metrics/metrics.tokens';
import { resolvePostgres, ResolvedPostgres } from './local-postgres';
import { PG_POOL, KYSELY, MIRROR_KYSELY } from './postgres.tokens';
import { createKysely, createPool, endPool, PoolOptions } from './postgres-pool';
import { registerPoolMetrics } from './postgres-metrics';
import { prepareSchema } from './postgres-migrator';
import { PostgresObservabilityDao } from './postgres-observability.dao';
import { PostgresTracingDao } from './postgres-tracing.dao';
import { InFlightSessions } from './in-flight-sessions';
import { PostgresProbe } from './postgres-probe';
import { OperatorError } from '../../config/operator-error';
import { redactUrl } from '../../config/redact-url';

const RESOLVED_POSTGRES = Symbol('RESOLVED_POSTGRES');
/** The pool under MIRROR_KYSELY (see there why the mirror has its own). */
const MIRROR_POOL = Symbol('MIRROR_POOL');
/** The mirror writes its gap records in the background, a few at a time (GapLedger), and /health counts the open ones. */
const MIRROR_POOL_MAX = 3;

/**
 * The API starts only on a schema this build can use. With MIGRATE_ON_START
 * it applies pending migrations; without (migrations run as a deploy step of
 * their own), pending ones refuse the start with the command to run, instead
 * of an API whose every request fails on a missing table or column. A
 * database migrated by a newer build (a rolled-back deploy) is used as it is,
 * which holds as long as migrations keep to the rule in README "Migrations":
 * a release's migration only adds what the release before it can ignore.
 *
 * Migrations are schema work, not requests: they run on a connection of their
 * own without the API's statement and client timeouts. A migration may take
 * longer than a request may (an index on a large table), and a second replica
 * starting beside the first waits on Kysely's migration lock, however long
 * that takes (the lock is taken for each migration: the two may take turns,
 * one migration at a time).
 */
async function prepareSchemaAtStart(url: string, migrateOnStart: boolean): Promise<void> {
  const logger = new Logger('Postgres');
  // statement_timeout 0: a role's or DATABASE_URL's would cancel a long migration too.
  const db = createKysely(createPool(url, 1, { statementTimeoutMs: 0 }));
  try {
    await sql`select 1`.execute(db).catch((error: Error) => {
      // The first query of the start: a wrong DATABASE_URL, a server that is down, a refused password.
      throw new OperatorError(`could not use Postgres at ${redactUrl(url)}: ${error.message}`);
    });
    const { applied, unknown } = await prepareSchema(db, migrateOnStart, { where: redactUrl(url), warn: (line) => logger.warn(line) });
    if (unknown.length) logger.warn(`the database has migrations this build does not know (${unknown.join(', ')}): a newer build migrated it`);
    if (applied.length) logger.log(`applied migrations: ${applied.join(', ')}`);
  } finally {
    await db.destroy();
  }
}

/** The API's request and mirror pools: its statement and client timeouts, and a lost connection logged as `lost`. */
function apiPoolOptions(config: AppConfig, lost: string): PoolOptions {
  const logger = new Logger('Postgres');
  return {
    statementTimeoutMs: config.postgres.statementTimeoutMs,
    clientTimeoutMs: config.postgres.clientTimeoutMs,
    onConnectionLost: (error) => logger.warn(`${lost}: ${error.message}`),
  };
}

/**
 * The system of record. Resolves the server (DATABASE_URL or the embedded
 * default), makes sure its schema is this build's (prepareSchemaAtStart), and owns
 * the pool's lifetime.
 */
@Global()
@Module({
  providers: [
    {
      provide: RESOLVED_POSTGRES,
      inject: [APP_CONFIG],
      useFactory: async (config: AppConfig) => {
        const logger = new Logger('Postgres');
        return resolvePostgres(config.postgres, (m) => logger.log(m));
      },
    },
    {
      provide: PG_POOL,
      inject: [APP_CONFIG, RESOLVED_POSTGRES],
      useFactory: (config: AppConfig, server: ResolvedPostgres) => createPool(server.url, config.postgres.poolMax, apiPoolOptions(config, 'connection lost')),
    },
    {
      provide: KYSELY,
      inject: [APP_CONFIG, RESOLVED_POSTGRES, PG_POOL],
      useFactory: async (config: AppConfig, server: ResolvedPostgres, pool: Pool) => {
        await prepareSchemaAtStart(server.url, config.postgres.migrateOnStart);
        return createKysely(pool);
      },
    },
    {
      provide: MIRROR_POOL,
      inject: [APP_CONFIG, RESOLVED_POSTGRES],
      // pg opens connections when first used: none with the mirror off.
      useFactory: (config: AppConfig, server: ResolvedPostgres) => createPool(server.url, MIRROR_POOL_MAX, apiPoolOptions(config, 'mirror connection lost')),
    },
    {
      provide: MIRROR_KYSELY,
      // After KYSELY, whose factory has made sure of the schema.
      inject: [MIRROR_POOL, KYSELY],
      useFactory: (pool: Pool) => createKysely(pool),
    },
    {
      provide: InFlightSessions,
      inject: [PG_POOL, RESOLVED_POSTGRES],
      useFactory: (pool: Pool, server: ResolvedPostgres) => new InFlightSessions(pool, server.url),
    },
    {
      provide: PostgresProbe,
      inject: [PG_POOL, MIRROR_POOL, RESOLVED_POSTGRES, METRICS_REGISTRY],
      useFactory: (pool: Pool, mirrorPool: Pool, server: ResolvedPostgres, registry: Registry) => {
        const probe = new PostgresProbe(server.url, pool, new Logger('Postgres'));
        // Registered here, where all three pools exist.
        registerPoolMetrics({ request: pool, mirror: mirrorPool, probe: probe.pool }, registry);
        return probe;
      },
    },
    PostgresTracingDao,
    PostgresObservabilityDao,
  ],
  exports: [KYSELY, MIRROR_KYSELY, PG_POOL, InFlightSessions, PostgresProbe, PostgresTracingDao, PostgresObservabilityDao],
})
export class PostgresModule implements OnApplicationShutdown {
  constructor(
    @Inject(PG_POOL) private readonly pool: Pool,
    @Inject(MIRROR_POOL) private readonly mirrorPool: Pool,
    @Inject(RESOLVED_POSTGRES) private readonly server: ResolvedPostgres,
    private readonly probe: PostgresProbe,
  ) {}

  async onApplicationShutdown(): Promise<void> {
    // The pools, not Kysely: see endPool for why their sessions must be closed before the server stops.
    await Promise.all([endPool(this.pool), endPool(this.mirrorPool), this.probe.close()]);
    // The embedded server: stopped if this API started it (unless others use it), let go of if it joined it.
    await this.server.stop?.();
    this.server.release?.();
  }
}
