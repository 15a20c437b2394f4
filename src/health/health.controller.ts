import { Controller, Get, Inject, Optional } from '@nestjs/common';
import { ApiOperation, ApiTags } from '@nestjs/swagger';
import { HealthCheck, HealthCheckService, HealthIndicatorService } from '@nestjs/terminus';
import { Pool } from 'pg';
import { Public } from '../auth/public.decorator';
import { PG_POOL } from '../dbs/postgres/postgres.tokens';
import { MIRROR_HEALTH, MirrorHealth } from './mirror-health';

const POSTGRES_CHECK_TIMEOUT_MS = 2_000;

@ApiTags('health')
@Controller('health')
export class HealthController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly indicators: HealthIndicatorService,
    @Inject(PG_POOL) private readonly pool: Pool,
    @Optional() @Inject(MIRROR_HEALTH) private readonly mirror?: MirrorHealth,
  ) {}

  /** 200 when Postgres answers. The mirror is reported (always "up") but never makes the API unhealthy. */
  @Public()
  @Get()
  @HealthCheck()
  @ApiOperation({ summary: 'Liveness and readiness: Postgres, and the ClickHouse mirror (informational)' })
  check() {
    return this.health.check([() => this.postgres(), () => this.mirrorStatus()]);
  }

  private async postgres() {
    const indicator = this.indicators.check('postgres');
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.pool.query('select 1'),
        new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${POSTGRES_CHECK_TIMEOUT_MS} ms`)), POSTGRES_CHECK_TIMEOUT_MS))),
      ]);
      return indicator.up();
    } catch (error) {
      return indicator.down({ message: `Postgres is unavailable: ${(error as Error).message}` });
    } finally {
      clearTimeout(timer);
    }
  }

  private async mirrorStatus() {
    const status = this.mirror ? await this.mirror.status() : { enabled: false };
    return this.indicators.check('mirror').up(status);
  }
}
