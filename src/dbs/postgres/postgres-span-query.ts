import { Expression, Kysely, RawBuilder, sql, SqlBool } from 'kysely';
import {
  AnalyticsBucket, AnalyticsQuery, Filter, Focus, SpanPage, SpanQuery, Windowing,
} from '../../tracing/span-query';
import { SpanBound, TraceTooLargeError } from '../../tracing/tracing.dao';
import { DB } from './database';
import { cursorTag, decodeCursor, encodeCursor, isCursorTime } from './keyset-cursor';
import { spanFilter } from './span-filter';
import { traceIdToUuid, uuidToTraceId } from '../../tracing/trace-id';
import { spanFromRow, spanIdToBytes } from './span-row.mapper';

/**
 * The span query language and analytics on Postgres. Queries take parsed
 * input (span-query.parser.ts) and are always scoped to one project.
 */

const DEFAULT_LIMIT = 100;
type Order = NonNullable<Windowing['order']>;

export async function querySpans(db: Kysely<DB>, projectId: string, query: SpanQuery, bound: SpanBound = {}): Promise<SpanPage> {
  const windowing = query.windowing ?? {};
  const order: Order = windowing.order ?? 'descending';
  // Focus span: no page holds more spans than one answer carries (MAX_RESPONSE_ITEMS), whatever limit asked for;
  // `next` goes on from where it ends. (Focus trace: limit counts traces, and maxSpans bounds their spans below.)
  const asked = windowing.limit ?? DEFAULT_LIMIT;
  const limit = query.focus === 'span' && bound.maxSpans !== undefined ? Math.min(asked, bound.maxSpans) : asked;
  const tag = cursorTag(`${query.focus}:${order}`, { filter: query.filter, oldest: windowing.oldest, newest: windowing.newest });
  const after = windowing.next === undefined ? null : decodeSpanCursor(windowing.next, query.focus, tag);
  const page = { projectId, filter: query.filter, windowing, order, limit, after, tag, maxSpans: bound.maxSpans };
  if (query.focus === 'span') return pageOfSpans(db, page);
  // The traces' span counts and their spans from one snapshot: a span written between the two reads would
  // take the page past maxSpans (MAX_RESPONSE_ITEMS), and could add a trace's newest span to some pages only.
  return db.transaction().setIsolationLevel('repeatable read').setAccessMode('read only').execute((trx) => pageOfTraces(trx, page));
}

interface PageRequest {
  projectId: string;
  filter: Filter | undefined;
  windowing: Windowing;
  order: Order;
  limit: number;
  after: CursorPosition | null;
  /** What its cursors are issued for (cursorTag): focus, order, filter and window. */
  tag: string;
  /** Focus trace: the most spans a page holds (whole traces only); none when undefined. */
  maxSpans: number | undefined;
}

/** Keyset on (start_time, trace_id, span_id): unique per project, so spans sharing a start time are neither skipped nor repeated. */
async function pageOfSpans(db: Kysely<DB>, page: PageRequest): Promise<SpanPage> {
  const { projectId, filter, windowing, order, limit, after } = page;
  const direction = order === 'ascending' ? 'asc' : 'desc';
  let select = db.selectFrom('spans').selectAll().where('project_id', '=', projectId);
  if (filter) select = select.where(spanFilter(filter));
  if (windowing.oldest !== undefined) select = select.where('start_time', '>=', windowing.oldest);
  if (windowing.newest !== undefined) select = select.where('start_time', '<', windowing.newest);
  if (after) {
    const position = after;
    select = select.where((eb) =>
      eb(eb.refTuple('start_time', 'trace_id', 'span_id'), order === 'ascending' ? '>' : '<', eb.tuple(
        position.startTime, traceIdToUuid(position.traceId), spanIdToBytes(position.spanId ?? ''),
      )),
    );
  }
  const rows = await select
    .orderBy('start_time', direction)
    .orderBy('trace_id', direction)
    .orderBy('span_id', direction)
    .limit(limit + 1)
    .execute();
  const spans = rows.slice(0, limit).map(spanFromRow);
  const last = spans[spans.length - 1];
  const next = rows.length > limit
    ? encodeSpanCursor(page.tag, { startTime: last.start_time, traceId: last.trace_id, spanId: last.span_id })
    : null;
  return { spans, next };
}

/**
 * A trace is selected when any of its spans matches the filter. Traces are
 * windowed, ordered and cursored by their start (the earliest start_time of
 * all their spans) then trace_id; the page holds every span of each trace.
 * With maxSpans, the page ends before the trace that would take it past that
 * many spans (the cursor resumes there), and a first trace that alone has
 * more is a TraceTooLargeError: a page never holds part of a trace. Run in
 * one snapshot (querySpans), so the spans read are the spans counted.
 *
 * A trace's start moves earlier when an earlier span of it arrives (exporters
 * often send the root last), and later when its earliest span is deleted or
 * replaced: paging while that happens, a page can repeat a trace an earlier
 * page returned or a later page miss it. A window whose traces no one is
 * writing pages exactly.
 */
async function pageOfTraces(db: Kysely<DB>, page: PageRequest): Promise<SpanPage> {
  const { projectId, filter, windowing, order, limit, after, maxSpans } = page;
  const direction = order === 'ascending' ? 'asc' : 'desc';
  let select = db
    .with('matched', (qb) => {
      let matched = qb.selectFrom('spans').select('trace_id').distinct().where('project_id', '=', projectId);
      if (filter) matched = matched.where(spanFilter(filter));
      // Every span of a trace starts at or after the trace's start, so these only prune: traces are ranked by
      // their start over every trace with a matching span, and only a lower bound on that start narrows the read.
      if (windowing.oldest !== undefined) matched = matched.where('start_time', '>=', windowing.oldest);
      if (after && order === 'ascending') matched = matched.where('start_time', '>=', after.startTime);
      return matched;
    })
    .with('trace_starts', (qb) =>
      qb
        .selectFrom('spans')
        .innerJoin('matched', 'matched.trace_id', 'spans.trace_id')
        .where('spans.project_id', '=', projectId)
        .groupBy('spans.trace_id')
        .select((eb) => ['spans.trace_id', eb.fn.min('spans.start_time').as('trace_start'), eb.fn.countAll<string>().as('span_count')]),
    )
    .selectFrom('trace_starts')
    .select(['trace_id', 'trace_start', 'span_count']);
  if (windowing.oldest !== undefined) select = select.where('trace_start', '>=', windowing.oldest);
  if (windowing.newest !== undefined) select = select.where('trace_start', '<', windowing.newest);
  if (after) {
    const position = after;
    select = select.where((eb) =>
      eb(eb.refTuple('trace_start', 'trace_id'), order === 'ascending' ? '>' : '<', eb.tuple(
        position.startTime, traceIdToUuid(position.traceId),
      )),
    );
  }
  const traces = await select.orderBy('trace_start', direction).orderBy('trace_id', direction).limit(limit + 1).execute();
  const cursorAfter = (trace: { trace_start: string; trace_id: string }) =>
    encodeSpanCursor(page.tag, { startTime: trace.trace_start, traceId: uuidToTraceId(trace.trace_id), spanId: null });
  const pageTraces = withinSpanBound(traces.slice(0, limit), maxSpans, cursorAfter);
  if (pageTraces.length === 0) return { spans: [], next: null };

  const traceIds = pageTraces.map((t) => t.trace_id);
  const rows = await db
    .selectFrom('spans')
    .selectAll()
    .where('project_id', '=', projectId)
    .where(sql<SqlBool>`trace_id = any(${traceIds}::uuid[])`)
    .orderBy(sql`array_position(${traceIds}::uuid[], trace_id)`)
    .orderBy('start_time', 'asc')
    .orderBy('span_id', 'asc')
    .execute();
  const next = traces.length > pageTraces.length ? cursorAfter(pageTraces[pageTraces.length - 1]) : null;
  return { spans: rows.map(spanFromRow), next };
}

/**
 * The leading traces whose spans add up to at most maxSpans. When the first
 * alone has more, a TraceTooLargeError carrying the cursor past it: paging
 * can skip it, where the previous page's cursor would only lead to it again.
 */
function withinSpanBound<T extends { trace_id: string; span_count: string }>(traces: T[], maxSpans: number | undefined, cursorAfter: (trace: T) => string): T[] {
  if (maxSpans === undefined) return traces;
  let spans = 0;
  const fitting = traces.findIndex((trace) => (spans += Number(trace.span_count)) > maxSpans);
  if (fitting === 0) throw new TraceTooLargeError([uuidToTraceId(traces[0].trace_id)], maxSpans, cursorAfter(traces[0]));
  return fitting === -1 ? traces : traces.slice(0, fitting);
}

/** A span page's cursor (keyset-cursor.ts), issued for its focus, order, filter and window: start_time, trace_id, span_id (null for focus trace). */
interface CursorPosition {
  startTime: string;
  traceId: string;
  spanId: string | null;
}

function encodeSpanCursor(tag: string, position: CursorPosition): string {
  return encodeCursor(tag, [position.startTime, position.traceId, position.spanId]);
}

function decodeSpanCursor(next: string, focus: Focus, tag: string): CursorPosition {
  const isPosition = (p: unknown[]): p is [string, string, string | null] =>
    p.length === 3 && isCursorTime(p[0]) && typeof p[1] === 'string' && /^[0-9a-f]{32}$/.test(p[1]) &&
    (focus === 'span' ? typeof p[2] === 'string' && /^[0-9a-f]{16}$/.test(p[2]) : p[2] === null);
  const [startTime, traceId, spanId] = decodeCursor(next, 'windowing.next', tag, isPosition);
  return { startTime, traceId, spanId };
}

const COSTS_PATH = ['ag', 'metrics', 'costs', 'cumulative', 'total'];
const TOKENS_PATH = ['ag', 'metrics', 'tokens', 'cumulative', 'total'];
const INPUT_TOKENS_PATH = ['gen_ai', 'usage', 'input_tokens'];
const OUTPUT_TOKENS_PATH = ['gen_ai', 'usage', 'output_tokens'];

/**
 * A numeric sum as a JSON number. Callers store any finite double, so a sum
 * can pass the largest one; its float8 cast would then fail the whole query,
 * for every later request over that window. Such a sum reads as the largest
 * double (of its sign) instead.
 */
function asDouble(sum: RawBuilder<unknown>) {
  return sql<number>`least(greatest(${sum}, -${sql.raw(LARGEST_DOUBLE)}::numeric), ${sql.raw(LARGEST_DOUBLE)}::numeric)::float8`;
}
const LARGEST_DOUBLE = String(Number.MAX_VALUE);

/** A number in attributes, or NULL when the path is missing or holds something else. */
function attributeNumber(path: string[]) {
  return sql<number>`(case when jsonb_typeof(attributes #> ${path}::text[]) = 'number' then (attributes #> ${path}::text[])::numeric end)`;
}

/** A span's own GenAI usage (input plus output tokens), 0 where it has none. */
const usage = sql`coalesce(${attributeNumber(INPUT_TOKENS_PATH)}, 0) + coalesce(${attributeNumber(OUTPUT_TOKENS_PATH)}, 0)`;
/** Whether a span carries GenAI usage of its own. */
const hasUsage = sql`(${attributeNumber(INPUT_TOKENS_PATH)} is not null or ${attributeNumber(OUTPUT_TOKENS_PATH)} is not null)`;

interface BucketRow {
  timestamp: string;
  total_count: number;
  total_duration: number;
  total_costs: number;
  total_tokens: number;
  error_count: number;
  error_duration: number;
  error_costs: number;
  error_tokens: number;
}

/**
 * Buckets of `interval` minutes from oldest, every one present (zeros where
 * empty). Focus span measures every matching span, in the bucket of its
 * start_time. Focus trace measures each trace with at least one matching
 * span once, from its root spans (parent_id is null; a span posted without a
 * parent is one, so a trace may have several), in the bucket of its first
 * root: see traceMeasures.
 */
export async function spanAnalytics(db: Kysely<DB>, projectId: string, query: AnalyticsQuery): Promise<AnalyticsBucket[]> {
  const { oldest, newest, interval } = query.windowing;
  const width = sql`make_interval(mins => ${interval}::int)`;
  const filter = query.filter ? spanFilter(query.filter) : sql<SqlBool>`true`;
  const measured = query.focus === 'trace'
    ? traceMeasures(projectId, query.windowing, width, filter)
    : sql`
      select date_bin(${width}, start_time, ${oldest}::timestamptz) as bucket_start,
             status_code = 'STATUS_CODE_ERROR' as failed,
             extract(epoch from (end_time - start_time)) * 1000 as duration,
             coalesce(${attributeNumber(COSTS_PATH)}, 0) as costs,
             coalesce(${attributeNumber(TOKENS_PATH)}, ${usage}) as tokens
      from spans
      where project_id = ${projectId}
        and start_time >= ${oldest}::timestamptz and start_time < ${newest}::timestamptz
        and ${filter}`;

  const { rows } = await sql<BucketRow>`
    with buckets as (
      select generate_series(${oldest}::timestamptz, ${newest}::timestamptz - interval '1 microsecond', ${width}) as bucket_start
    ),
    measured as (${measured}
    )
    select b.bucket_start as timestamp,
           count(m.bucket_start)::int as total_count,
           coalesce(sum(m.duration), 0)::float8 as total_duration,
           ${asDouble(sql`coalesce(sum(m.costs), 0)`)} as total_costs,
           ${asDouble(sql`coalesce(sum(m.tokens), 0)`)} as total_tokens,
           (count(m.bucket_start) filter (where m.failed))::int as error_count,
           coalesce(sum(m.duration) filter (where m.failed), 0)::float8 as error_duration,
           ${asDouble(sql`coalesce(sum(m.costs) filter (where m.failed), 0)`)} as error_costs,
           ${asDouble(sql`coalesce(sum(m.tokens) filter (where m.failed), 0)`)} as error_tokens
    from buckets b left join measured m on m.bucket_start = b.bucket_start
    group by b.bucket_start
    order by b.bucket_start`.execute(db);

  return rows.map((r) => ({
    timestamp: r.timestamp,
    interval,
    total: { count: r.total_count, duration: r.total_duration, costs: r.total_costs, tokens: r.total_tokens },
    errors: { count: r.error_count, duration: r.error_duration, costs: r.error_costs, tokens: r.error_tokens },
  }));
}

/**
 * One row per trace for focus trace: a trace whose first root (earliest
 * start_time) starts in the window and that has a span matching the filter,
 * measured over all its roots, wherever they start:
 * - failed when any root failed; duration from the first root's start to the
 *   latest end among its roots (a single root's own duration);
 * - costs: the sum of the roots' cumulative costs (each root's covers the
 *   spans below it, and roots share none);
 * - tokens: see tokensOfTrace.
 * A trace counts once, in one window: a root inside the window is only a way
 * to find the trace, and a trace with a root before `oldest` belongs to the
 * window holding that root. A trace without a stored root (not arrived yet,
 * or a local root whose parent is remote) is not counted.
 * Roots are found through spans_trace_roots_idx (migration 0003), not by
 * reading every span of the trace (which tokensOfTrace does when a root has
 * no token figure, and the filter's EXISTS until a span matches). Unqualified
 * columns in a subquery are its innermost table's.
 */
function traceMeasures(projectId: string, windowing: AnalyticsQuery['windowing'], width: RawBuilder<unknown>, filter: Expression<SqlBool>) {
  const { oldest, newest } = windowing;
  const ofTrace = sql`project_id = ${projectId} and trace_id = found.trace_id`;
  return sql`
      select date_bin(${width}, trace.start_time, ${oldest}::timestamptz) as bucket_start,
             trace.failed, trace.duration, trace.costs, trace.tokens
      from (
        select trace_id from (
          select distinct trace_id from spans
          where project_id = ${projectId} and parent_id is null
            and start_time >= ${oldest}::timestamptz and start_time < ${newest}::timestamptz
        ) as in_window
        -- A root before the window: the trace is an earlier window's.
        where not exists (select 1 from spans as earlier
          where earlier.project_id = ${projectId} and earlier.trace_id = in_window.trace_id
            and earlier.parent_id is null and earlier.start_time < ${oldest}::timestamptz)
      ) as found
      cross join lateral (
        select min(start_time) as start_time,
               bool_or(status_code = 'STATUS_CODE_ERROR') as failed,
               extract(epoch from (max(end_time) - min(start_time))) * 1000 as duration,
               coalesce(sum(${attributeNumber(COSTS_PATH)}), 0) as costs,
               case when bool_and(${ownTokens} is not null) then sum(${ownTokens}) else ${tokensOfTrace(ofTrace)} end as tokens
        from spans as root
        where ${ofTrace} and parent_id is null
      ) as trace
      where exists (select 1 from spans as member where ${ofTrace} and ${filter})`;
}

/**
 * A span's own token figure: its cumulative total, else its own GenAI usage
 * (an agent span carrying its run's total over the model calls below it);
 * NULL when it has neither.
 */
const ownTokens = sql`coalesce(${attributeNumber(TOKENS_PATH)}, case when ${hasUsage} then ${usage} end)`;

/**
 * A trace's tokens, when some root has no figure of its own (each has:
 * their sum, read from the roots alone): from each root down, a span with a
 * figure counts it and stops there, as the figure covers what is below it;
 * a span without one counts the spans below it the same way. OTLP traces
 * carry usage on the model-call spans, rarely on an HTTP root. As the
 * trace's other measures, only what lies below its roots counts: a span
 * whose parent is not stored (not arrived yet, or remote) is below none,
 * and neither is a parent_id cycle. The trace's spans are read once and
 * walked in memory (a hash join per level: ~0.23 s for 200,000 spans under
 * one root); UNION drops a span met again.
 */
function tokensOfTrace(ofTrace: RawBuilder<unknown>) {
  return sql`(
        with recursive member as materialized (
          select span_id, parent_id, ${ownTokens} as figure from spans where ${ofTrace}
        ),
        counted(span_id, figure) as (
          select span_id, figure from member where parent_id is null
          union
          select child.span_id, child.figure from member as child join counted on child.parent_id = counted.span_id
          where counted.figure is null
        )
        select coalesce(sum(figure), 0) from counted)`;
}
