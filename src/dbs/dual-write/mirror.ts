import { Logger } from '@nestjs/common';
import { Counter, Registry } from 'prom-client';
import { BatchWriter, MirrorRow } from '../clickhouse/batch-writer';
import { MirrorPlan, MirrorTarget } from './mirrored-dao';

/**
 * Where the decorator hands committed rows: keeps only the projects being
 * rolled out (CLICKHOUSE_PROJECT_IDS, empty = all), maps each record through
 * its table's row mapper and enqueues it on the batch writer. Runs on the
 * caller's path, so it only does in-memory work and never throws.
 */
export class Mirror implements MirrorTarget {
  private readonly logger = new Logger('Mirror');
  private readonly projects: Set<string> | null;
  private readonly failures: Counter<'entity'>;

  constructor(
    private readonly writer: BatchWriter,
    projectIds: string[],
    registry: Registry,
  ) {
    this.projects = projectIds.length ? new Set(projectIds) : null;
    this.failures = new Counter({
      name: 'mirror_record_failures_total',
      help: 'Committed writes whose mirror records could not be built (found later by verify)',
      labelNames: ['entity'],
      registers: [registry],
    });
  }

  mirrors(projectId: string): boolean {
    return this.projects === null || this.projects.has(projectId);
  }

  accept<Mirrored>(plan: MirrorPlan<unknown, Mirrored>, records: Mirrored[]): void {
    const rows: MirrorRow[] = [];
    for (const record of records) {
      try {
        const row = plan.toMirrorRow(record);
        if (this.mirrors(row.projectId)) rows.push(row);
      } catch (error) {
        this.failed(plan.entity, error);
      }
    }
    if (rows.length) this.writer.write(rows);
  }

  failed(entity: string, error: unknown): void {
    this.failures.inc({ entity });
    this.logger.error({ entity, err: error }, 'could not build mirror records for a committed write');
  }
}
