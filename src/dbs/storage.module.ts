import { Global, Module } from '@nestjs/common';
import { OBSERVABILITY_DAO } from '../observability/observability.dao';
import { TRACING_DAO } from '../tracing/tracing.dao';
import { PostgresModule } from './postgres/postgres.module';
import { PostgresObservabilityDao } from './postgres/postgres-observability.dao';
import { PostgresTracingDao } from './postgres/postgres-tracing.dao';

/**
 * Binds the DAO ports the services use. This is the one place that decides
 * what stands behind them.
 */
@Global()
@Module({
  imports: [PostgresModule],
  providers: [
    { provide: TRACING_DAO, useExisting: PostgresTracingDao },
    { provide: OBSERVABILITY_DAO, useExisting: PostgresObservabilityDao },
  ],
  exports: [TRACING_DAO, OBSERVABILITY_DAO],
})
export class StorageModule {}
