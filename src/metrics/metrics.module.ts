import { Global, MiddlewareConsumer, Module, NestModule } from '@nestjs/common';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { HttpMetricsMiddleware } from './http-metrics.middleware';
import { MetricsController } from './metrics.controller';
import { METRICS_REGISTRY } from './metrics.tokens';

/** Prometheus metrics at GET /metrics: process, HTTP and (when on) the mirror's. */
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
  ],
  exports: [METRICS_REGISTRY],
})
export class MetricsModule implements NestModule {
  // Applied here only (not also listed as a provider): a second instance would register the histogram twice.
  configure(consumer: MiddlewareConsumer): void {
    consumer.apply(HttpMetricsMiddleware).forRoutes('*');
  }
}
