import { Module } from '@nestjs/common';
import { ObservabilityModule } from '../observability/observability.module';
import { TracingModule } from '../tracing/tracing.module';
import { OtlpController } from './otlp.controller';

/**
 * The OTLP/HTTP receiver. Its route is marked @TakesOtlp(), so RequestBodies
 * reads binary protobuf there too (inflating gzip and enforcing BODY_LIMIT
 * after inflating, as the OTLP spec asks).
 */
@Module({
  imports: [TracingModule, ObservabilityModule],
  controllers: [OtlpController],
})
export class OtlpModule {}
