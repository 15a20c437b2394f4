import { Kysely, sql } from 'kysely';
import { DB } from '../../src/dbs/postgres/database';

/**
 * History for backfill and verify specs, generated inside Postgres (INSERT ...
 * SELECT generate_series), so hundreds of thousands of realistic rows take
 * seconds instead of minutes of API calls.
 */
export interface HistoryShape {
  projects: string[];
  /** Rows are spread over this many consecutive UTC days, ending a few days ago. */
  days: number;
  rows: number;
  /** Distinguishes keys of several seeds into one database. */
  seed?: string;
  /** Every row gets exactly this created_at instead of spreading them. */
  createdAt?: string;
}

/** Base day of the generated history: old enough that a run's upper bound (now()) is after it. */
const FIRST_DAY = sql`date_trunc('day', now() at time zone 'UTC') at time zone 'UTC' - interval '40 days'`;

/** Spans of 4-span traces, attributes of ~300 B to ~1.1 KB (a prompt of varying length), one event each. */
export async function seedSpans(db: Kysely<DB>, shape: HistoryShape): Promise<void> {
  const seed = shape.seed ?? 's';
  const createdAt = shape.createdAt
    ? sql`${shape.createdAt}::timestamptz`
    : sql`${FIRST_DAY} + (i % ${shape.days}) * interval '1 day' + ((i::bigint * 7919) % 86400000000) * interval '1 microsecond'`;
  await sql`
    insert into spans (project_id, trace_id, span_id, parent_id, trace_type, span_type, span_kind, span_name, start_time, end_time,
                       status_code, status_message, attributes, "references", links, hashes, events, exception, created_at, updated_at)
    select (${shape.projects}::uuid[])[1 + i % ${shape.projects.length}],
           md5(${seed} || 'trace' || (i / 4))::uuid,
           decode(substr(md5(${seed} || 'span' || i), 1, 16), 'hex'),
           case when i % 4 = 0 then null else decode(substr(md5(${seed} || 'span' || (i - i % 4)), 1, 16), 'hex') end,
           'invocation', (array['llm', 'chain', 'tool', 'embedding'])[1 + i % 4], 'SPAN_KIND_CLIENT', 'span-' || (i % 50),
           c.created_at - interval '2 seconds', c.created_at - interval '500 milliseconds',
           case when i % 10 = 0 then 'STATUS_CODE_ERROR' else 'STATUS_CODE_OK' end,
           case when i % 10 = 0 then 'rate limited' else null end,
           jsonb_build_object(
             'ag', jsonb_build_object('metrics', jsonb_build_object('tokens', jsonb_build_object('cumulative', jsonb_build_object('total', i % 1000)),
                                                                     'costs', jsonb_build_object('cumulative', jsonb_build_object('total', (i % 97) / 1000.0)))),
             'gen_ai', jsonb_build_object('request', jsonb_build_object('model', 'gpt-4o', 'temperature', 0.7)),
             'prompt', repeat('Résumé the ünïcødé ✓ notes: lorem ipsum dolor. ', 5 + i % 20)),
           null, null, null,
           jsonb_build_array(jsonb_build_object('name', 'token', 'timestamp', c.created_at, 'attributes', jsonb_build_object('n', i))),
           null, c.created_at, c.created_at + (i % 1000) * interval '1 microsecond'
    from generate_series(0, ${shape.rows - 1}) as i,
         lateral (select ${createdAt} as created_at) c
    -- Stored in creation order, as rows written live are.
    order by c.created_at`.execute(db);
}

/** Nodes of 3-node trees, with data, metrics and meta payloads. */
export async function seedNodes(db: Kysely<DB>, shape: HistoryShape): Promise<void> {
  const seed = shape.seed ?? 'n';
  const createdAt = shape.createdAt
    ? sql`${shape.createdAt}::timestamptz`
    : sql`${FIRST_DAY} + (i % ${shape.days}) * interval '1 day' + ((i::bigint * 104729) % 86400000000) * interval '1 microsecond'`;
  await sql`
    insert into nodes (project_id, node_id, tree_id, root_id, parent_id, node_name, node_type, time_start, time_end,
                       status_code, status_message, data, metrics, meta, refs, exception, links, otel, created_at, updated_at)
    select (${shape.projects}::uuid[])[1 + i % ${shape.projects.length}],
           md5(${seed} || 'node' || i)::uuid,
           md5(${seed} || 'tree' || (i / 3))::uuid,
           md5(${seed} || 'node' || (i - i % 3))::uuid,
           case when i % 3 = 0 then null else md5(${seed} || 'node' || (i - i % 3))::uuid end,
           'node-' || (i % 20), (array['task', 'llm', 'tool'])[1 + i % 3],
           c.created_at - interval '1 second', c.created_at,
           'OK', null,
           jsonb_build_object('inputs', jsonb_build_object('q', repeat('why? ', 10 + i % 40)), 'outputs', jsonb_build_object('a', 'because ' || i)),
           jsonb_build_object('acc', jsonb_build_object('tokens', i % 500)),
           jsonb_build_object('env', 'test'),
           null, null, null, null,
           c.created_at, c.created_at + (i % 100) * interval '1 microsecond'
    from generate_series(0, ${shape.rows - 1}) as i,
         lateral (select ${createdAt} as created_at) c
    order by c.created_at`.execute(db);
}
