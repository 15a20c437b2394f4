import { Global, Module } from '@nestjs/common';
import { Kysely } from 'kysely';
import { DB } from './postgres/database';
import { OBSERVABILITY_DAO } from '../observability/observability.dao';
import { TRACING_DAO } from '../tracing/tracing.dao';
import { MIRROR, MirrorModule, MirrorRuntime } from './dual-write/mirror.module';
import { nodeMirrorPlan, spanMirrorPlan } from './dual-write/mirror-plans';
import { mirrorWrites } from './dual-write/mirrored-dao';
import { PostgresModule } from './postgres/postgres.module';
import { PostgresObservabilityDao } from './postgres/postgres-observability.dao';
import { PostgresTracingDao } from './postgres/postgres-tracing.dao';
import { KYSELY } from './postgres/postgres.tokens';
import { inOneTransaction } from './postgres/transactions';
import { ONE_TRANSACTION, OneTransaction } from './write-scope';

/**
 * Binds the DAO ports the services use: the one place that decides what
 * stands behind them. USE_CLICKHOUSE off: the Postgres DAOs themselves. On:
 * the same DAOs wrapped by the dual-write decorator. ONE_TRANSACTION lets a
 * caller make several of their writes commit together (see WriteScope).
 */
@Global()
@Module({
  imports: [PostgresModule, MirrorModule],
  providers: [
    {
      provide: TRACING_DAO,
      inject: [PostgresTracingDao, MIRROR],
      useFactory: (postgres: PostgresTracingDao, runtime: MirrorRuntime | null) =>
        runtime ? mirrorWrites(postgres, spanMirrorPlan, runtime.mirror) : postgres,
    },
    {
      provide: OBSERVABILITY_DAO,
      inject: [PostgresObservabilityDao, MIRROR],
      useFactory: (postgres: PostgresObservabilityDao, runtime: MirrorRuntime | null) =>
        runtime ? mirrorWrites(postgres, nodeMirrorPlan, runtime.mirror) : postgres,
    },
    {
      provide: ONE_TRANSACTION,
      inject: [KYSELY],
      useFactory: (db: Kysely<DB>): OneTransaction => (work) => inOneTransaction(db, work),
    },
  ],
  exports: [TRACING_DAO, OBSERVABILITY_DAO, ONE_TRANSACTION],
})
export class StorageModule {}
