import { Global, Module } from '@nestjs/common';
import { OBSERVABILITY_DAO } from '../observability/observability.dao';
import { TRACING_DAO } from '../tracing/tracing.dao';
import { MIRROR, MirrorModule, MirrorRuntime } from './dual-write/mirror.module';
import { nodeMirrorPlan, spanMirrorPlan } from './dual-write/mirror-plans';
import { mirrorWrites } from './dual-write/mirrored-dao';
import { PostgresModule } from './postgres/postgres.module';
import { PostgresObservabilityDao } from './postgres/postgres-observability.dao';
import { PostgresTracingDao } from './postgres/postgres-tracing.dao';

/**
 * Binds the DAO ports the services use: the one place that decides what
 * stands behind them. USE_CLICKHOUSE off: the Postgres DAOs themselves. On:
 * the same DAOs wrapped by the dual-write decorator.
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
  ],
  exports: [TRACING_DAO, OBSERVABILITY_DAO],
})
export class StorageModule {}
