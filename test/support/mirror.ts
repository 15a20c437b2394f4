import { ClickHouseClient } from '@clickhouse/client';
import { Kysely } from 'kysely';
import { DB } from '../../src/dbs/postgres/database';
import { nodeFromRow } from '../../src/dbs/postgres/node-row.mapper';
import { spanFromRow } from '../../src/dbs/postgres/span-row.mapper';
import { ObservabilityNode } from '../../src/observability/node';
import { Span } from '../../src/tracing/span';
import { NodeMirrorQueries, SpanMirrorQueries } from './mirror-reads';

/** Every live span and node of a project, from Postgres and (read with FINAL) from ClickHouse, sorted by key. */
export async function snapshotBothSides(db: Kysely<DB>, clickhouse: ClickHouseClient, projectId: string) {
  const byKey = <T>(key: (row: T) => string) => (a: T, b: T) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0);
  const spanKey = (s: Span) => `${s.trace_id}/${s.span_id}`;
  const nodeKey = (n: ObservabilityNode) => n.node_id;

  const pgSpans = (await db.selectFrom('spans').selectAll().where('project_id', '=', projectId).execute()).map(spanFromRow).sort(byKey(spanKey));
  const pgNodes = (await db.selectFrom('nodes').selectAll().where('project_id', '=', projectId).execute()).map(nodeFromRow).sort(byKey(nodeKey));

  const spansDao = new SpanMirrorQueries(clickhouse);
  const nodesDao = new NodeMirrorQueries(clickhouse);
  const chSpans: Span[] = [];
  for (const bucket of await spansDao.countByProjectDay({ projectId })) {
    for await (const page of spansDao.readBucket(projectId, bucket.day)) {
      chSpans.push(...page.map(({ version: _v, deleted: _d, ...span }) => span));
    }
  }
  const chNodes: ObservabilityNode[] = [];
  for (const bucket of await nodesDao.countByProjectDay({ projectId })) {
    for await (const page of nodesDao.readBucket(projectId, bucket.day)) {
      chNodes.push(...page.map(({ version: _v, deleted: _d, ...node }) => node));
    }
  }
  return { pgSpans, pgNodes, chSpans: chSpans.sort(byKey(spanKey)), chNodes: chNodes.sort(byKey(nodeKey)) };
}
