import { Inject, Injectable } from '@nestjs/common';
import { Kysely, sql, SqlBool } from 'kysely';
import { DeletedNode, NodeInput, ObservabilityNode } from '../../observability/node';
import { NodePage, NodeQuery, ObservabilityDao, TreeTooLargeError } from '../../observability/observability.dao';
import { DB, NodeRow } from './database';
import { selectAtMost } from './bounded-read';
import { cursorTag, decodeCursor, encodeCursor, isCursorTime } from './keyset-cursor';
import { inTransaction } from './transactions';
import { KYSELY } from './postgres.tokens';
import { nodeFromRow, nodeToRow } from './node-row.mapper';
import { inCallersOrder, inLockOrder } from './lock-order';
import { isUuid } from '../../uuid';

/** A node row binds 18 values; stay well under Postgres's 65535 parameters. */
const INSERT_CHUNK = 1000;

/** See PostgresTracingDao: versions must grow with every write to a row. */
const nextVersion = sql<string>`greatest(clock_timestamp(), nodes.updated_at + interval '1 microsecond')`;
/** See PostgresTracingDao: a delete's version is just past the deleted row's. */
const tombstoneVersion = sql<string>`nodes.updated_at + interval '1 microsecond'`;

const DEFAULT_NODE_LIMIT = 100;
/** What a node page's cursor is issued for (keyset-cursor.ts): the query's selection; its position is [time_start, node_id]. */
function nodeCursorTag(query: NodeQuery): string {
  const { tree_id, node_type, node_name, oldest, newest } = query;
  return cursorTag('nodes:descending', { tree_id, node_type, node_name, oldest, newest });
}

function decodeNodeCursor(next: string, tag: string): { timeStart: string; nodeId: string } {
  const isPosition = (p: unknown[]): p is [string, string] =>
    p.length === 2 && isCursorTime(p[0]) && typeof p[1] === 'string' && isUuid(p[1]);
  const [timeStart, nodeId] = decodeCursor(next, 'next', tag, isPosition);
  return { timeStart, nodeId };
}

@Injectable()
export class PostgresObservabilityDao implements ObservabilityDao {
  constructor(@Inject(KYSELY) private readonly db: Kysely<DB>) {}

  async ingestNodes(projectId: string, nodes: NodeInput[]): Promise<ObservabilityNode[]> {
    if (nodes.length === 0) return [];
    // In the primary key's order, so concurrent ingests of the same nodes queue instead of deadlocking (lock-order.ts).
    const ordered = inLockOrder(nodes, nodeKey);
    return inTransaction(this.db, async (trx) => {
      const stored: NodeRow[] = [];
      for (let i = 0; i < ordered.length; i += INSERT_CHUNK) {
        const rows = await trx
          .insertInto('nodes')
          .values(ordered.slice(i, i + INSERT_CHUNK).map((n) => nodeToRow(projectId, n)))
          .onConflict((oc) =>
            oc.columns(['project_id', 'node_id']).doUpdateSet((eb) => ({
              tree_id: eb.ref('excluded.tree_id'),
              root_id: eb.ref('excluded.root_id'),
              parent_id: eb.ref('excluded.parent_id'),
              node_name: eb.ref('excluded.node_name'),
              node_type: eb.ref('excluded.node_type'),
              time_start: eb.ref('excluded.time_start'),
              time_end: eb.ref('excluded.time_end'),
              status_code: eb.ref('excluded.status_code'),
              status_message: eb.ref('excluded.status_message'),
              data: eb.ref('excluded.data'),
              metrics: eb.ref('excluded.metrics'),
              meta: eb.ref('excluded.meta'),
              refs: eb.ref('excluded.refs'),
              exception: eb.ref('excluded.exception'),
              links: eb.ref('excluded.links'),
              otel: eb.ref('excluded.otel'),
              updated_at: nextVersion,
            })),
          )
          .returningAll()
          .execute();
        stored.push(...rows);
      }
      return inCallersOrder(nodes, stored.map(nodeFromRow), nodeKey);
    });
  }

  async readTree(projectId: string, treeId: string, options: { maxNodes?: number } = {}): Promise<ObservabilityNode[]> {
    const select = this.db
      .selectFrom('nodes')
      .selectAll()
      .where('project_id', '=', projectId)
      .where('tree_id', '=', treeId)
      .orderBy('time_start')
      .orderBy('node_id');
    const rows = await selectAtMost(select, options.maxNodes, (max) => new TreeTooLargeError(treeId, max));
    return rows.map(nodeFromRow);
  }

  /**
   * Newest time_start first, then node_id: a keyset on the two, so nodes
   * sharing a time_start are neither skipped nor repeated across pages.
   * The two run in opposite directions, so the cursor is an OR rather than
   * a row comparison; its redundant `time_start <=` bound is what lets the
   * (project_id[, tree_id], time_start desc, node_id) indexes start a page
   * at the cursor rather than read every newer node first.
   */
  async queryNodes(projectId: string, query: NodeQuery, options: { maxNodes?: number } = {}): Promise<NodePage> {
    // No page holds more nodes than one answer carries (MAX_RESPONSE_ITEMS), whatever limit asked for; `next` goes on.
    const limit = Math.min(query.limit ?? DEFAULT_NODE_LIMIT, options.maxNodes ?? Infinity);
    let q = this.db.selectFrom('nodes').selectAll().where('project_id', '=', projectId);
    if (query.tree_id) q = q.where('tree_id', '=', query.tree_id);
    if (query.node_type) q = q.where('node_type', '=', query.node_type);
    if (query.node_name) q = q.where('node_name', '=', query.node_name);
    if (query.oldest) q = q.where('time_start', '>=', query.oldest);
    if (query.newest) q = q.where('time_start', '<', query.newest);
    const tag = nodeCursorTag(query);
    if (query.next !== undefined) {
      const after = decodeNodeCursor(query.next, tag);
      q = q.where('time_start', '<=', after.timeStart).where((eb) => eb.or([
        eb('time_start', '<', after.timeStart),
        eb.and([eb('time_start', '=', after.timeStart), eb('node_id', '>', after.nodeId)]),
      ]));
    }
    const rows = await q
      .orderBy('time_start', 'desc')
      .orderBy('node_id')
      .limit(limit + 1)
      .execute();
    const nodes = rows.slice(0, limit).map(nodeFromRow);
    const last = nodes[nodes.length - 1];
    return { nodes, next: rows.length > limit ? encodeCursor(tag, [last.time_start, last.node_id]) : null };
  }

  async deleteTrees(projectId: string, treeIds: string[]): Promise<DeletedNode[]> {
    if (treeIds.length === 0) return [];
    // In a transaction, like every write: a delete the client gives up on is then never committed (see createPool).
    return inTransaction(this.db, async (trx) => {
      // The tree's index finds its nodes in the order they sit on disk: the DELETE takes only the rows a subquery
      // has locked in key order (lock-order.ts), in one statement, so a node moved into the tree meanwhile is not
      // locked out of order (as the tracing DAO's deleteInLockOrder says).
      // The ids as one array: an IN list binds one parameter per id, and Postgres takes at most 65,535.
      const locked = trx
        .selectFrom('nodes')
        .select('node_id')
        .where('project_id', '=', projectId)
        .where(sql<SqlBool>`tree_id = any(${treeIds}::uuid[])`)
        .orderBy('node_id')
        .forUpdate();
      return trx
        .deleteFrom('nodes')
        .where('project_id', '=', projectId)
        .where('node_id', 'in', locked)
        .returning(['project_id', 'node_id', 'created_at', 'tree_id', 'time_start', tombstoneVersion.as('deleted_at')])
        .execute();
    });
  }
}

/** Lower case, as Postgres gives uuids back: a caller's upper-case id must still find its stored row. */
const nodeKey = (node: { node_id: string }) => node.node_id.toLowerCase();
