import { INestApplication } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { NestExpressApplication } from '@nestjs/platform-express';
import { DocumentBuilder, SwaggerModule } from '@nestjs/swagger';
import { Logger } from 'nestjs-pino';
import { AppModule } from './app.module';
import { AppConfig } from './config/app-config';
import { APP_CONFIG } from './config/config.module';

/**
 * Builds the HTTP app exactly as production runs it; main.ts and the tests
 * both start it through here.
 */
export async function createApp(env: Record<string, string | undefined> = {}): Promise<NestExpressApplication> {
  const app = await NestFactory.create<NestExpressApplication>(AppModule.forRoot(env), { bufferLogs: true, bodyParser: false });
  app.useLogger(app.get(Logger));
  const config = app.get<AppConfig>(APP_CONFIG);
  app.useBodyParser('json', { limit: config.http.bodyLimit });
  app.disable('x-powered-by');
  setUpOpenApi(app);
  return app;
}

function setUpOpenApi(app: INestApplication): void {
  const document = SwaggerModule.createDocument(
    app,
    new DocumentBuilder()
      .setTitle('tracing-api')
      .setDescription('Spans and observability nodes on PostgreSQL, optionally mirrored to ClickHouse. Authenticate with `Authorization: ApiKey <key>`.')
      .setVersion('0.1.0')
      .addSecurity('ApiKey', { type: 'apiKey', in: 'header', name: 'Authorization', description: 'ApiKey <key>' })
      .build(),
  );
  SwaggerModule.setup('docs', app, document, { jsonDocumentUrl: 'docs/openapi.json' });
}
