import { ClickHouseClient } from '@clickhouse/client';
import { isoToClickHouseTime } from './span-clickhouse-row.mapper';

/**
 * The queries both mirror tables share: their live rows, and what verify
 * compares with Postgres (live rows and the sum of their versions per
 * project and created_at day).
 */

/**
 * Live rows of a mirror table, newest version of each key only. FINAL merges
 * versions at read time (and drops tombstoned keys); is_deleted = 0 states it
 * outright. `where` and `tail` bind every value as a parameter.
 */
export async function selectLive<Row, Out>(
  client: ClickHouseClient,
  table: 'spans' | 'nodes',
  columns: readonly string[],
  query: { where: string[]; tail: string; params: Record<string, unknown> },
  fromRow: (row: Row) => Out,
): Promise<Out[]> {
  const result = await client.query({
    query: `SELECT ${columns.map((c) => `\`${c}\``).join(', ')} FROM ${table} FINAL WHERE is_deleted = 0 AND ${query.where.join(' AND ')} ${query.tail}`,
    query_params: query.params,
    format: 'JSONEachRow',
  });
  return (await result.json<Row>()).map(fromRow);
}

/** Rows of one project and created_at day (UTC), as the verifier compares them with Postgres. */
export interface ProjectDayCount {
  project_id: string;
  /** YYYY-MM-DD, UTC. */
  day: string;
  rows: number;
  /** Sum of the live rows' versions: any missed update or delete changes it. */
  version_sum: bigint;
}

export interface ProjectDayFilter {
  projectId?: string;
  /** Inclusive lower bound on created_at (ISO-8601). */
  since?: string;
  /** Exclusive upper bound on created_at (ISO-8601). */
  until?: string;
}

/** Live rows per project and created_at day of a mirror table, read with FINAL. */
export async function countByProjectDay(
  client: ClickHouseClient,
  table: 'spans' | 'nodes',
  filter: ProjectDayFilter,
): Promise<ProjectDayCount[]> {
  const where = ['is_deleted = 0'];
  const params: Record<string, unknown> = {};
  if (filter.projectId !== undefined) {
    where.push('project_id = {projectId:UUID}');
    params.projectId = filter.projectId;
  }
  if (filter.since !== undefined) {
    where.push(`created_at >= {since:DateTime64(6, 'UTC')}`);
    params.since = isoToClickHouseTime(filter.since);
  }
  if (filter.until !== undefined) {
    where.push(`created_at < {until:DateTime64(6, 'UTC')}`);
    params.until = isoToClickHouseTime(filter.until);
  }
  const result = await client.query({
    // UInt128 so the sum of thousands of 16-digit versions cannot wrap.
    query: `SELECT project_id, toString(toDate(created_at)) AS day, count() AS rows,
                   toString(sum(toUInt128(version))) AS version_sum
            FROM ${table} FINAL
            WHERE ${where.join(' AND ')}
            GROUP BY project_id, day
            -- Text order, as Postgres sorts uuids; ClickHouse compares UUIDs by their halves.
            ORDER BY toString(project_id), day`,
    query_params: params,
    format: 'JSONEachRow',
  });
  const rows = await result.json<{ project_id: string; day: string; rows: string; version_sum: string }>();
  return rows.map((r) => ({ project_id: r.project_id, day: r.day, rows: Number(r.rows), version_sum: BigInt(r.version_sum) }));
}
