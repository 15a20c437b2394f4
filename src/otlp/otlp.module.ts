import { Inject, MiddlewareConsumer, Module, NestModule, RequestMethod } from '@nestjs/common';
import { raw } from 'express';
import { AppConfig } from '../config/app-config';
import { APP_CONFIG } from '../config/config.module';
import { ObservabilityModule } from '../observability/observability.module';
import { TracingModule } from '../tracing/tracing.module';
import { OtlpController } from './otlp.controller';

/**
 * The OTLP/HTTP receiver. The app parses only JSON bodies, so this module
 * adds a raw parser for binary protobuf on its own route (it inflates gzip
 * and enforces BODY_LIMIT after inflating, as the OTLP spec asks).
 */
@Module({
  imports: [TracingModule, ObservabilityModule],
  controllers: [OtlpController],
})
export class OtlpModule implements NestModule {
  constructor(@Inject(APP_CONFIG) private readonly config: AppConfig) {}

  configure(consumer: MiddlewareConsumer): void {
    consumer
      .apply(raw({ type: 'application/x-protobuf', limit: this.config.http.bodyLimit }))
      .forRoutes({ path: 'otlp/v1/traces', method: RequestMethod.POST });
  }
}
