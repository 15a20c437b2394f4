import { ConsoleLogger, INestApplication, Logger as NestLogger, LoggerService } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { NestExpressApplication } from '@nestjs/platform-express';
import { DocumentBuilder, SwaggerModule } from '@nestjs/swagger';
import { Logger } from 'nestjs-pino';
import { AppModule } from './app.module';
import { OperatorError } from './config/operator-error';
import { documentErrorAnswers } from './http/openapi-errors';
import { documentRequestIds } from './http/request-id';
import { HttpMetricsMiddleware } from './metrics/http-metrics.middleware';

/**
 * Builds the HTTP app exactly as production runs it; main.ts and the tests
 * both start it through here.
 */
export async function createApp(env: Record<string, string | undefined> = {}): Promise<NestExpressApplication> {
  // A provider that fails (a schema behind the build, a migration that fails) rejects here, for the caller
  // to report, rather than Nest printing a DI stack and exiting the process itself. The logs buffered until
  // the JSON logger is attached are flushed to it once it is.
  let app: NestExpressApplication;
  try {
    app = await NestFactory.create<NestExpressApplication>(AppModule.forRoot(env), {
      bufferLogs: true,
      autoFlushLogs: false,
      abortOnError: false,
      bodyParser: false,
    });
  } catch (error) {
    releaseStartupLogs(error);
    throw error;
  }
  app.useLogger(app.get(Logger));
  app.flushLogs();
  app.disable('x-powered-by');
  // Before any route (routes are added at init): every request is timed, those the router refuses included.
  const httpMetrics = app.get(HttpMetricsMiddleware);
  app.use(httpMetrics.use.bind(httpMetrics));
  setUpOpenApi(app);
  return app;
}

/**
 * A start that failed never attached the JSON logger, so what Nest buffered
 * until then is still held. For an operator error the message main prints
 * says all there is, and the buffer is dropped; for anything else it is the
 * context of the failure, printed to the console. Either way nothing stays
 * buffered for the rest of the process.
 */
function releaseStartupLogs(error: unknown): void {
  if (error instanceof OperatorError) return discardBufferedLogs(new ConsoleLogger());
  NestLogger.flush();
  NestLogger.overrideLogger(new ConsoleLogger());
}

/** Empties Nest's log buffer without printing it (with no logger to write to, a flush only empties it); `next` logs from then on. */
export function discardBufferedLogs(next: LoggerService): void {
  NestLogger.overrideLogger(false);
  NestLogger.flush();
  NestLogger.overrideLogger(next);
}

function setUpOpenApi(app: INestApplication): void {
  const description = new DocumentBuilder()
    .setTitle('tracing-api')
    .setDescription('Spans and observability nodes on PostgreSQL, optionally mirrored to ClickHouse. Authenticate with `Authorization: ApiKey <key>`.')
    .setVersion('0.1.0')
    .addSecurity('ApiKey', { type: 'apiKey', in: 'header', name: 'Authorization', description: 'ApiKey <key>' })
    .build();
  const document = documentRequestIds(documentErrorAnswers(SwaggerModule.createDocument(app, description)));
  SwaggerModule.setup('docs', app, document, { jsonDocumentUrl: 'docs/openapi.json' });
}
