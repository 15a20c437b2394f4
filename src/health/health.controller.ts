import { Controller, Get, Inject } from '@nestjs/common';
import { ApiOperation, ApiTags } from '@nestjs/swagger';
import { HealthCheck, HealthCheckService, HealthIndicatorService } from '@nestjs/terminus';
import { Public } from '../auth/public.decorator';
import { PostgresProbe } from '../dbs/postgres/postgres-probe';
import { MIRROR_HEALTH, MirrorHealth } from './mirror-health';
import { ShutdownState } from './shutdown-state';

@ApiTags('health')
@Controller('health')
export class HealthController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly indicators: HealthIndicatorService,
    private readonly probe: PostgresProbe,
    private readonly shutdown: ShutdownState,
    @Inject(MIRROR_HEALTH) private readonly mirror: MirrorHealth,
  ) {}

  /**
   * 200 when Postgres answers (on the probe's own connection: a busy request pool is reported, not "down";
 * so is a Postgres that refuses writes, as `writable: false`, since reads go on),
   * 503 once the process is shutting down (see ShutdownState).
   * The mirror is reported (always "up") but never makes the API unhealthy.
   */
  @Public()
  @Get()
  @HealthCheck()
  @ApiOperation({ summary: 'Readiness: Postgres, and the ClickHouse mirror (informational); 503 while Postgres does not answer or the process shuts down' })
  check() {
    return this.health.check([() => this.process(), () => this.postgres(), () => this.mirrorStatus()]);
  }

  /**
   * Liveness: 200 while the process answers, whatever Postgres does. A liveness probe on /health would restart
   * every replica through a Postgres failover, and a replica cannot start without Postgres: they would crash-loop
   * and come back only after the restart backoff, each restart losing its mirror queue to gap records.
   */
  @Public()
  @Get('live')
  @ApiOperation({ summary: 'Liveness: 200 while the process answers (for a liveness probe; /health is readiness)' })
  live() {
    return { status: 'ok' };
  }

  private process() {
    const indicator = this.indicators.check('process');
    return this.shutdown.shuttingDown ? indicator.down({ message: 'shutting down: finishing in-flight requests' }) : indicator.up();
  }

  private async postgres() {
    const indicator = this.indicators.check('postgres');
    const [result, requestPool] = [await this.probe.check(), this.probe.requestPoolUse()];
    if (!result.up) return indicator.down({ message: `Postgres is unavailable: ${result.reason}`, requestPool });
    return result.writable
      ? indicator.up({ writable: true, requestPool })
      : indicator.up({ writable: false, message: 'Postgres refuses writes (a standby, or a database made read-only): writes are 503s, reads go on', requestPool });
  }

  private async mirrorStatus() {
    const status = await this.mirror.status();
    return this.indicators.check('mirror').up(status);
  }
}
