import { Global, Module } from '@nestjs/common';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { HttpMetricsMiddleware } from './http-metrics.middleware';
import { MetricsController } from './metrics.controller';
import { METRICS_REGISTRY } from './metrics.tokens';

/**
 * Prometheus metrics at GET /metrics: process, HTTP and (when on) the mirror's.
 * The HTTP histogram's middleware is mounted by createApp on the Express app
 * itself, not through Nest's MiddlewareConsumer: Nest mounts middleware as a
 * route (`/{*path}`), which a path the router cannot decode (`/%E0`) never
 * reaches, so those requests went uncounted.
 */
@Global()
@Module({
  controllers: [MetricsController],
  providers: [
    {
      provide: METRICS_REGISTRY,
      useFactory: () => {
        const registry = new Registry();
        collectDefaultMetrics({ register: registry });
        return registry;
      },
    },
    HttpMetricsMiddleware,
  ],
  exports: [METRICS_REGISTRY],
})
export class MetricsModule {}
