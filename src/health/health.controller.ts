import { Controller, Get, Inject, Optional } from '@nestjs/common';
import { ApiOperation, ApiTags } from '@nestjs/swagger';
import { HealthCheck, HealthCheckService, HealthIndicatorService } from '@nestjs/terminus';
import { Public } from '../auth/public.decorator';
import { PostgresProbe } from '../dbs/postgres/postgres-probe';
import { MIRROR_HEALTH, MirrorHealth } from './mirror-health';

@ApiTags('health')
@Controller('health')
export class HealthController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly indicators: HealthIndicatorService,
    private readonly probe: PostgresProbe,
    @Optional() @Inject(MIRROR_HEALTH) private readonly mirror?: MirrorHealth,
  ) {}

  /**
   * 200 when Postgres answers (on the probe's own connection: a busy request pool is reported, not "down").
   * The mirror is reported (always "up") but never makes the API unhealthy.
   */
  @Public()
  @Get()
  @HealthCheck()
  @ApiOperation({ summary: 'Liveness and readiness: Postgres, and the ClickHouse mirror (informational)' })
  check() {
    return this.health.check([() => this.postgres(), () => this.mirrorStatus()]);
  }

  private async postgres() {
    const indicator = this.indicators.check('postgres');
    const [result, requestPool] = [await this.probe.check(), this.probe.requestPoolUse()];
    return result.up ? indicator.up({ requestPool }) : indicator.down({ message: `Postgres is unavailable: ${result.reason}`, requestPool });
  }

  private async mirrorStatus() {
    const status = this.mirror ? await this.mirror.status() : { enabled: false };
    return this.indicators.check('mirror').up(status);
  }
}
