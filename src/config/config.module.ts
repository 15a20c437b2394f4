import { DynamicModule, Global, Module } from '@nestjs/common';
import { ConfigModule as NestConfigModule, ConfigService, registerAs } from '@nestjs/config';
import { AppConfig, parseConfig } from './app-config';

export const APP_CONFIG = Symbol('APP_CONFIG');

/**
 * Loads and validates the environment once, through @nestjs/config, and
 * exposes the typed result under APP_CONFIG. `overrides` lets tests and
 * scripts pin settings without touching process.env.
 */
@Global()
@Module({})
export class AppConfigModule {
  static forRoot(overrides: Record<string, string | undefined> = {}): DynamicModule {
    const load = registerAs('app', () => parseConfig({ ...process.env, ...overrides }));
    return {
      module: AppConfigModule,
      imports: [NestConfigModule.forRoot({ isGlobal: true, ignoreEnvFile: true, load: [load] })],
      providers: [
        {
          provide: APP_CONFIG,
          inject: [ConfigService],
          useFactory: (config: ConfigService): AppConfig => config.getOrThrow<AppConfig>('app'),
        },
      ],
      exports: [APP_CONFIG],
    };
  }
}
