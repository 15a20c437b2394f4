import { DynamicModule, Inject, MiddlewareConsumer, Module, NestModule } from '@nestjs/common';
import { APP_FILTER } from '@nestjs/core';
import { LoggerModule } from 'nestjs-pino';
import { AuthModule } from './auth/auth.module';
import { AppConfig } from './config/app-config';
import { APP_CONFIG, AppConfigModule } from './config/config.module';
import { StorageModule } from './dbs/storage.module';
import { HealthModule } from './health/health.module';
import { HttpExceptionFilter } from './http/http-exception.filter';
import { jsonBodies } from './http/json-bodies';
import { assignRequestId } from './http/request-id';
import { MetricsModule } from './metrics/metrics.module';
import { ObservabilityModule } from './observability/observability.module';
import { OtlpModule } from './otlp/otlp.module';
import { TracingModule } from './tracing/tracing.module';

@Module({})
export class AppModule implements NestModule {
  constructor(@Inject(APP_CONFIG) private readonly config: AppConfig) {}

  /**
   * Bodies are read here, in the root module's middleware: after the global
   * modules' request logging and metrics (Nest applies those first), so a body
   * refused before any route (415, 413, unparsable) is logged and counted like
   * every other answer.
   */
  configure(consumer: MiddlewareConsumer): void {
    consumer.apply(...jsonBodies(this.config.http.bodyLimit)).forRoutes('*');
  }

  /** `env` overrides process.env for this instance (tests, scripts). */
  static forRoot(env: Record<string, string | undefined> = {}): DynamicModule {
    return {
      module: AppModule,
      imports: [
        AppConfigModule.forRoot(env),
        LoggerModule.forRootAsync({
          inject: [APP_CONFIG],
          useFactory: (config: AppConfig) => ({
            pinoHttp: {
              level: config.logLevel,
              genReqId: assignRequestId,
              // Keys are secrets: never log them.
              redact: ['req.headers.authorization', 'req.headers.cookie'],
              customLogLevel: (_req, res, error) => (error || res.statusCode >= 500 ? 'error' : res.statusCode >= 400 ? 'warn' : 'info'),
              customProps: (req) => ({ projectId: (req as { projectId?: string }).projectId }),
              autoLogging: { ignore: (req) => req.url === '/health' || req.url === '/metrics' },
            },
          }),
        }),
        MetricsModule,
        StorageModule,
        AuthModule,
        TracingModule,
        ObservabilityModule,
        OtlpModule,
        HealthModule,
      ],
      providers: [{ provide: APP_FILTER, useClass: HttpExceptionFilter }],
    };
  }
}
