import { isUtf8 } from 'node:buffer';
import { ConsoleLogger, INestApplication, Logger as NestLogger } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { NestExpressApplication } from '@nestjs/platform-express';
import { DocumentBuilder, SwaggerModule } from '@nestjs/swagger';
import { Logger } from 'nestjs-pino';
import { AppModule } from './app.module';
import { AppConfig } from './config/app-config';
import { OperatorError } from './config/operator-error';
import { APP_CONFIG } from './config/config.module';
import { describeUnparsableJson, requireJsonBodies } from './http/json-content-type';
import { documentErrorAnswers } from './http/openapi-errors';

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
  const config = app.get<AppConfig>(APP_CONFIG);
  app.use(requireJsonBodies);
  app.useBodyParser('json', { limit: config.http.bodyLimit, verify: refuseInvalidUtf8 });
  app.use(describeUnparsableJson);
  app.disable('x-powered-by');
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
  if (error instanceof OperatorError) NestLogger.overrideLogger(false);
  NestLogger.flush();
  NestLogger.overrideLogger(new ConsoleLogger());
}

/**
 * body-parser would decode invalid UTF-8 to U+FFFD and store that instead of
 * what was sent: refuse it with a 400 (type entity.* so the filter keeps the status).
 */
function refuseInvalidUtf8(_req: unknown, _res: unknown, body: Buffer, encoding: string): void {
  if (/^utf-?8$/i.test(encoding) && !isUtf8(body)) {
    throw Object.assign(new Error('request body is not valid UTF-8'), { status: 400, type: 'entity.verify.failed' });
  }
}

function setUpOpenApi(app: INestApplication): void {
  const description = new DocumentBuilder()
    .setTitle('tracing-api')
    .setDescription('Spans and observability nodes on PostgreSQL, optionally mirrored to ClickHouse. Authenticate with `Authorization: ApiKey <key>`.')
    .setVersion('0.1.0')
    .addSecurity('ApiKey', { type: 'apiKey', in: 'header', name: 'Authorization', description: 'ApiKey <key>' })
    .build();
  const document = documentErrorAnswers(SwaggerModule.createDocument(app, description));
  SwaggerModule.setup('docs', app, document, { jsonDocumentUrl: 'docs/openapi.json' });
}
