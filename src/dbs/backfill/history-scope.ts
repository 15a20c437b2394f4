import { MAX_YEAR, MIN_YEAR, normalizeTimestamp } from '../../tracing/timestamp';
import { MIRRORED_ENTITIES, MirroredEntity } from '../dual-write/mirrored-dao';
import { isUuid } from '../../uuid';

/** The history to copy and compare is the mirror's: its tables, each named the same in Postgres and ClickHouse. */
export const ENTITIES = MIRRORED_ENTITIES;
export type Entity = MirroredEntity;

/** Which part of history a backfill or verify run covers. */
export interface HistoryScope {
  entity: Entity;
  /** Sorted, lower case; null means every project. */
  projectIds: string[] | null;
  /** Inclusive lower bound on created_at, ISO-8601 with microseconds (UTC). */
  since?: string;
  /** Exclusive upper bound on created_at, ISO-8601 with microseconds (UTC). */
  until?: string;
}

/** Filters as an operator typed them, before validation. */
export interface ScopeOptions {
  entity?: string;
  project?: string;
  since?: string;
  until?: string;
  /** CLICKHOUSE_PROJECT_IDS: when set, only these projects are mirrored, so only they are copied or compared. */
  mirroredProjects?: string[];
}

/** An option that cannot be right whatever the servers hold. */
export class ScopeError extends Error {
  override name = 'ScopeError';
}


/** One scope per entity (`all` is both, spans first). */
export function parseScopes(options: ScopeOptions): HistoryScope[] {
  const entity = options.entity ?? 'all';
  if (entity !== 'all' && !(ENTITIES as readonly string[]).includes(entity)) {
    throw new ScopeError(`--entity must be spans, nodes or all, got "${entity}"`);
  }
  const since = time('--since', options.since);
  const until = time('--until', options.until);
  if (since && until && since >= until) throw new ScopeError(`--since (${since}) must be earlier than --until (${until})`);

  let projectIds: string[] | null = null;
  const mirrored = (options.mirroredProjects ?? []).map((p) => p.toLowerCase());
  if (options.project !== undefined) {
    if (!isUuid(options.project)) throw new ScopeError(`--project must be a UUID, got "${options.project}"`);
    const project = options.project.toLowerCase();
    if (mirrored.length && !mirrored.includes(project)) {
      throw new ScopeError(`project ${project} is not in CLICKHOUSE_PROJECT_IDS: the mirror does not keep it up to date, so backfill does not copy it and verify does not compare it`);
    }
    projectIds = [project];
  } else if (mirrored.length) {
    projectIds = [...new Set(mirrored)].sort();
  }

  const entities: Entity[] = entity === 'all' ? [...ENTITIES] : [entity as Entity];
  return entities.map((e) => ({ entity: e, projectIds, ...(since && { since }), ...(until && { until }) }));
}

function time(name: string, text: string | undefined): string | undefined {
  if (text === undefined) return undefined;
  const normalized = normalizeTimestamp(text);
  if (normalized === null) {
    // A well-formed time past the range is refused too: Postgres and ClickHouse's DateTime64(6) cannot both hold it.
    throw new ScopeError(`${name} must be an ISO-8601 time with a zone between years ${MIN_YEAR} and ${MAX_YEAR} (e.g. 2026-11-01T00:00:00Z), got "${text}"`);
  }
  return normalized;
}

/**
 * The checkpoint's identity: the same command (entity and filters) resumes
 * the same run. Readable, so an operator can find the row.
 */
export function runKeyOf(scope: HistoryScope): string {
  return [
    scope.entity,
    `project=${scope.projectIds ? scope.projectIds.join(',') : '*'}`,
    `since=${scope.since ?? '-'}`,
    `until=${scope.until ?? '-'}`,
  ].join(' ');
}

/** UTC day (YYYY-MM-DD) of an ISO-8601 timestamp in UTC. */
export const dayOf = (iso: string): string => iso.slice(0, 10);

/** The part of `scope` inside one project's UTC day: a verify bucket as a scope. */
export function bucketScope(scope: HistoryScope, projectId: string, day: string): HistoryScope {
  const start = `${day}T00:00:00.000000Z`;
  const next = new Date(Date.parse(`${day}T00:00:00Z`) + 86_400_000).toISOString().slice(0, 10);
  const end = `${next}T00:00:00.000000Z`;
  return {
    entity: scope.entity,
    projectIds: [projectId],
    since: scope.since && scope.since > start ? scope.since : start,
    until: scope.until && scope.until < end ? scope.until : end,
  };
}
