import { DynamicModule, Module } from '@nestjs/common';
import { APP_FILTER, APP_INTERCEPTOR, Reflector } from '@nestjs/core';
import { LoggerModule } from 'nestjs-pino';
import { pino } from 'pino';
import { AuthModule } from './auth/auth.module';
import { AppConfig } from './config/app-config';
import { APP_CONFIG, AppConfigModule } from './config/config.module';
import { StorageModule } from './dbs/storage.module';
import { HealthModule } from './health/health.module';
import { HttpExceptionFilter } from './http/http-exception.filter';
import { RequestBodies } from './http/request-bodies';
import { assignRequestId } from './http/request-id';
import { MetricsModule } from './metrics/metrics.module';
import { ObservabilityModule } from './observability/observability.module';
import { OtlpModule } from './otlp/otlp.module';
import { TracingModule } from './tracing/tracing.module';

/** Paths whose requests get no completion log line: the health probe and the Prometheus scrape. */
const UNLOGGED_PATHS = new Set(['/health', '/health/live', '/metrics']);

/** A URL's path as Express routes it: without the query, a trailing slash or case (/HEALTH/?x=1 is /health). */
function routedPath(url: string): string {
  return url.split('?')[0].replace(/\/+$/, '').toLowerCase();
}

/** Keys are secrets: never log them. */
const REDACTED = ['req.headers.authorization', 'req.headers.cookie'];

@Module({})
export class AppModule {
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
              // One logger, so one stream, for request lines and every other line: nestjs-pino otherwise makes a
              // second pino for lines outside a request, and shutdown could wait for only one of them to be
              // written (main.ts, exitOnceLogged). Request lines go through a child of it, which shares its
              // stream and takes its level and redaction.
              logger: pino({ level: config.logLevel, redact: REDACTED }),
              genReqId: assignRequestId,
              customLogLevel: (_req, res, error) => (error || res.statusCode >= 500 ? 'error' : res.statusCode >= 400 ? 'warn' : 'info'),
              customProps: (req) => ({ projectId: (req as { projectId?: string }).projectId }),
              // Probes and scrapes every few seconds would drown the log.
              autoLogging: { ignore: (req) => UNLOGGED_PATHS.has(routedPath(req.url ?? '')) },
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
      providers: [
        { provide: APP_FILTER, useClass: HttpExceptionFilter },
        // Bodies are read after the API-key guard (see RequestBodies).
        { provide: APP_INTERCEPTOR, inject: [Reflector, APP_CONFIG], useFactory: (reflector: Reflector, config: AppConfig) => new RequestBodies(reflector, config.http.bodyLimit) },
      ],
    };
  }
}
