import { createHash } from 'node:crypto';
import { sql } from 'kysely';
import { cursorTag } from '../../src/dbs/postgres/keyset-cursor';
import { createKysely, createPool } from '../../src/dbs/postgres/postgres-pool';
import { querySpans, spanAnalytics } from '../../src/dbs/postgres/postgres-span-query';
import { spanToRow } from '../../src/dbs/postgres/span-row.mapper';
import { Json, SpanInput } from '../../src/tracing/span';
import { InvalidQueryError, SpanQuery } from '../../src/tracing/span-query';
import { parseAnalyticsQuery, parseSpanQuery } from '../../src/tracing/span-query.parser';
import { TraceTooLargeError } from '../../src/tracing/tracing.dao';
import { createTestDatabase, TestDatabase } from '../support/postgres';

const hex = (seed: string, length: number) => createHash('sha256').update(seed).digest('hex').slice(0, length);
const traceId = (seed: string) => hex(`trace:${seed}`, 32);
const spanId = (seed: string) => hex(`span:${seed}`, 16);
const projectId = (seed: string) => {
  const h = hex(`project:${seed}`, 32);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
};

const USER_1 = '11111111-1111-4111-8111-111111111111';
const USER_2 = '22222222-2222-4222-8222-222222222222';

type SpanSeed = Partial<SpanInput> & { span_name: string; start_time: string };
type Seed = SpanSeed & { created_by_id?: string | null; created_at?: string };

function spanOf(seed: SpanSeed): SpanInput {
  return {
    trace_id: traceId(seed.span_name),
    span_id: spanId(seed.span_name),
    parent_id: null,
    trace_type: 'invocation',
    span_type: 'task',
    span_kind: 'SPAN_KIND_INTERNAL',
    end_time: seed.start_time,
    status_code: 'STATUS_CODE_UNSET',
    status_message: null,
    attributes: {},
    references: null,
    links: null,
    hashes: null,
    events: null,
    exception: null,
    ...seed,
  };
}

describe('span queries on Postgres', () => {
  let test: TestDatabase;
  beforeAll(async () => (test = await createTestDatabase()));
  afterAll(async () => test.drop());

  async function insert(project: string, seeds: Seed[]): Promise<SpanInput[]> {
    const spans: SpanInput[] = [];
    const rows = seeds.map(({ created_by_id: userId, created_at: createdAt, ...seed }) => {
      const span = spanOf(seed);
      spans.push(span);
      const at = createdAt ?? span.start_time;
      return { ...spanToRow(project, span, userId ?? null), created_at: at, updated_at: at };
    });
    for (let i = 0; i < rows.length; i += 500) await test.db.insertInto('spans').values(rows.slice(i, i + 500)).execute();
    return spans;
  }

  const query = (project: string, body: unknown) => querySpans(test.db, project, parseSpanQuery(body));

  /** Pages through the whole result with the cursor. */
  async function everyPage(project: string, body: { focus?: string; filter?: unknown; windowing?: Record<string, unknown> }) {
    const pages: SpanInput[][] = [];
    let next: string | null = null;
    do {
      const windowing: Record<string, unknown> = { ...body.windowing, ...(next ? { next } : {}) };
      const page = await query(project, { ...body, windowing });
      pages.push(page.spans);
      next = page.next;
      if (pages.length > 2000) throw new Error('cursor does not advance');
    } while (next);
    return pages;
  }

  describe('filters', () => {
    const A = projectId('filters');
    const B = projectId('filters-other');
    const TA = traceId('trace-a');
    const TB = traceId('trace-b');
    const S = { root: spanId('root-a'), llm: spanId('llm-call'), tool: spanId('tool_50%'), other: spanId('tool_other') };

    beforeAll(async () => {
      await insert(A, [
        {
          span_name: 'root-a', trace_id: TA, span_id: S.root, span_type: 'workflow', span_kind: 'SPAN_KIND_SERVER',
          start_time: '2026-11-22T10:00:00.000000Z', end_time: '2026-11-22T10:00:02.000000Z', status_code: 'STATUS_CODE_OK',
          attributes: {
            ag: { metrics: { costs: { cumulative: { total: 0.5 } } }, type: 'workflow' },
            user: { id: 'u1', tier: 'gold' }, flag: true, score: 10, label: 'alpha',
          },
          references: [{ id: 'ref-1', kind: 'app' }], events: [{ name: 'start' }],
          created_by_id: USER_1, created_at: '2026-11-23T00:00:00.000001Z',
        },
        {
          span_name: 'llm-call', trace_id: TA, span_id: S.llm, parent_id: S.root, span_type: 'llm', span_kind: 'SPAN_KIND_CLIENT',
          start_time: '2026-11-22T10:00:00.500000Z', end_time: '2026-11-22T10:00:01.500000Z',
          status_code: 'STATUS_CODE_ERROR', status_message: 'timeout after 30s',
          attributes: { gen_ai: { usage: { input_tokens: 3, output_tokens: 4 } }, score: 2.5, label: 'beta', flag: false, ag: { tags: ['x', 'y'] } },
          exception: { type: 'TimeoutError' }, created_by_id: USER_2, created_at: '2026-11-23T00:00:00.000002Z',
        },
        {
          span_name: 'tool_50%', trace_id: TB, span_id: S.tool, span_type: 'tool',
          start_time: '2026-11-22T11:00:00.000000Z', end_time: '2026-11-22T11:00:00.250000Z',
          attributes: { score: '10', label: 'gamma', user: { id: 'u2' }, odd: "it's" },
          links: [{ trace_id: TA }], hashes: [{ h: 1 }], created_at: '2026-11-23T00:00:00.000003Z',
        },
        {
          span_name: 'tool_other', trace_id: TB, span_id: S.other, parent_id: S.tool, span_type: 'tool', trace_type: 'annotation',
          start_time: '2026-11-22T11:00:01.000000Z', end_time: '2026-11-22T11:00:02.000000Z', status_message: 'ok',
          attributes: { score: null, label: 'Alpha' }, created_at: '2026-11-23T00:00:00.000004Z',
        },
      ]);
      // Same trace and span ids, same attributes, other project: must never show up in A.
      await insert(B, [
        {
          span_name: 'other-project', trace_id: TA, span_id: S.root, start_time: '2026-11-22T10:00:00.000000Z',
          attributes: { user: { id: 'u1', tier: 'gold' }, flag: true, score: 10, label: 'alpha' }, references: [{ id: 'ref-1', kind: 'app' }],
        },
      ]);
    });

    const names = async (filter: unknown, project = A) =>
      (await query(project, { filter, windowing: { limit: 1000 } })).spans.map((s) => s.span_name).sort();
    const one = (condition: Record<string, unknown>) => ({ conditions: [condition] });
    const ALL = ['llm-call', 'root-a', 'tool_50%', 'tool_other'];

    it.each<[string, Record<string, unknown>, string[]]>([
      ['trace_id is', { field: 'trace_id', operator: 'is', value: TA.toUpperCase() }, ['llm-call', 'root-a']],
      ['parent_id is null', { field: 'parent_id', operator: 'is', value: null }, ['root-a', 'tool_50%']],
      ['parent_id is_not null', { field: 'parent_id', operator: 'is_not', value: null }, ['llm-call', 'tool_other']],
      ['parent_id is_not a span (nulls included)', { field: 'parent_id', operator: 'is_not', value: S.root }, ['root-a', 'tool_50%', 'tool_other']],
      ['span_id eq', { field: 'span_id', operator: 'eq', value: S.llm }, ['llm-call']],
      ['parent_id neq (nulls excluded)', { field: 'parent_id', operator: 'neq', value: S.root }, ['tool_other']],
      ['status_message neq (nulls excluded)', { field: 'status_message', operator: 'neq', value: 'timeout after 30s' }, ['tool_other']],
      ['span_type eq', { field: 'span_type', operator: 'eq', value: 'tool' }, ['tool_50%', 'tool_other']],
      ['trace_type is', { field: 'trace_type', operator: 'is', value: 'annotation' }, ['tool_other']],
      ['status_code in', { field: 'status_code', operator: 'in', value: ['STATUS_CODE_OK', 'STATUS_CODE_ERROR'] }, ['llm-call', 'root-a']],
      ['span_kind not_in', { field: 'span_kind', operator: 'not_in', value: ['SPAN_KIND_INTERNAL'] }, ['llm-call', 'root-a']],
      ['span_id in', { field: 'span_id', operator: 'in', value: [S.root, S.tool] }, ['root-a', 'tool_50%']],
      ['span_id not_in', { field: 'span_id', operator: 'not_in', value: [S.root, S.tool] }, ['llm-call', 'tool_other']],
      ['trace_id not_in', { field: 'trace_id', operator: 'not_in', value: [TA] }, ['tool_50%', 'tool_other']],
      ['start_time gt (strict)', { field: 'start_time', operator: 'gt', value: '2026-11-22T10:00:00.5Z' }, ['tool_50%', 'tool_other']],
      ['start_time gte', { field: 'start_time', operator: 'gte', value: '2026-11-22T12:00:00.5+02:00' }, ['llm-call', 'tool_50%', 'tool_other']],
      ['end_time lt', { field: 'end_time', operator: 'lt', value: '2026-11-22T10:00:02Z' }, ['llm-call']],
      ['end_time lte', { field: 'end_time', operator: 'lte', value: '2026-11-22T10:00:02Z' }, ['llm-call', 'root-a']],
      ['start_time btwn (inclusive)', { field: 'start_time', operator: 'btwn', value: ['2026-11-22T10:00:00.5Z', '2026-11-22T11:00:00Z'] }, ['llm-call', 'tool_50%']],
      ['start_time in', { field: 'start_time', operator: 'in', value: ['2026-11-22T11:00:01Z'] }, ['tool_other']],
      ['created_at gt', { field: 'created_at', operator: 'gt', value: '2026-11-23T00:00:00.000002Z' }, ['tool_50%', 'tool_other']],
      ['updated_at lte', { field: 'updated_at', operator: 'lte', value: '2026-11-23T00:00:00.000001Z' }, ['root-a']],
      ['created_by_id eq', { field: 'created_by_id', operator: 'eq', value: USER_1 }, ['root-a']],
      ['created_by_id is null', { field: 'created_by_id', operator: 'is', value: null }, ['tool_50%', 'tool_other']],
      ['updated_by_id in', { field: 'updated_by_id', operator: 'in', value: [USER_1, USER_2] }, ['llm-call', 'root-a']],
      ['span_name gte (bytewise)', { field: 'span_name', operator: 'gte', value: 'root' }, ['root-a', 'tool_50%', 'tool_other']],
      ['span_name lt', { field: 'span_name', operator: 'lt', value: 'root' }, ['llm-call']],
      ['span_name btwn', { field: 'span_name', operator: 'btwn', value: ['llm', 'tool'] }, ['llm-call', 'root-a']],
      ['span_name contains "_" literally', { field: 'span_name', operator: 'contains', value: '_' }, ['tool_50%', 'tool_other']],
      ['span_name contains "%" literally', { field: 'span_name', operator: 'contains', value: '%' }, ['tool_50%']],
      ['span_name startswith', { field: 'span_name', operator: 'startswith', value: 'tool_' }, ['tool_50%', 'tool_other']],
      ['span_name endswith', { field: 'span_name', operator: 'endswith', value: '0%' }, ['tool_50%']],
      ['span_name like', { field: 'span_name', operator: 'like', value: '%-%' }, ['llm-call', 'root-a']],
      ['span_name like with an escaped wildcard', { field: 'span_name', operator: 'like', value: 'tool\\_5%' }, ['tool_50%']],
      ['status_message startswith', { field: 'status_message', operator: 'startswith', value: 'time' }, ['llm-call']],
      ['status_message exists', { field: 'status_message', operator: 'exists' }, ['llm-call', 'tool_other']],
      ['exception not_exists', { field: 'exception', operator: 'not_exists' }, ['root-a', 'tool_50%', 'tool_other']],
      ['exception is null', { field: 'exception', operator: 'is', value: null }, ['root-a', 'tool_50%', 'tool_other']],
      ['exception is an object', { field: 'exception', operator: 'is', value: { type: 'TimeoutError' } }, ['llm-call']],
      ['exception key eq', { field: 'exception', key: 'type', operator: 'eq', value: 'TimeoutError' }, ['llm-call']],
      ['references has', { field: 'references', operator: 'has', value: [{ id: 'ref-1' }] }, ['root-a']],
      ['references has_not (missing counts)', { field: 'references', operator: 'has_not', value: [{ id: 'ref-1' }] }, ['llm-call', 'tool_50%', 'tool_other']],
      ['links key has', { field: 'links', key: '0', operator: 'has', value: { trace_id: TA } }, ['tool_50%']],
      ['hashes exists', { field: 'hashes', operator: 'exists' }, ['tool_50%']],
      ['events key (array index) eq', { field: 'events', key: '0.name', operator: 'eq', value: 'start' }, ['root-a']],
      ['attributes has', { field: 'attributes', operator: 'has', value: { user: { tier: 'gold' } } }, ['root-a']],
      ['attributes key has a scalar in an array', { field: 'attributes', key: 'ag.tags', operator: 'has', value: 'x' }, ['llm-call']],
      ['attributes key has_not', { field: 'attributes', key: 'ag.tags', operator: 'has_not', value: 'x' }, ['root-a', 'tool_50%', 'tool_other']],
      ['attributes key exists (JSON null counts)', { field: 'attributes', key: 'score', operator: 'exists' }, ALL],
      ['attributes key exists (nested)', { field: 'attributes', key: 'user.id', operator: 'exists' }, ['root-a', 'tool_50%']],
      ['attributes key not_exists', { field: 'attributes', key: 'user.id', operator: 'not_exists' }, ['llm-call', 'tool_other']],
      ['attributes key is null (missing or JSON null)', { field: 'attributes', key: 'user', operator: 'is', value: null }, ['llm-call', 'tool_other']],
      ['attributes key is null (JSON null)', { field: 'attributes', key: 'score', operator: 'is', value: null }, ['tool_other']],
      ['attributes key is an object', { field: 'attributes', key: 'user', operator: 'is', value: { id: 'u2' } }, ['tool_50%']],
      ['attributes key is_not an object', { field: 'attributes', key: 'user', operator: 'is_not', value: { id: 'u2' } }, ['llm-call', 'root-a', 'tool_other']],
      ['attributes key eq number (JSON numbers only)', { field: 'attributes', key: 'score', operator: 'eq', value: 10 }, ['root-a']],
      ['attributes key eq string (the text of the key)', { field: 'attributes', key: 'score', operator: 'eq', value: '10' }, ['root-a', 'tool_50%']],
      ['attributes key neq number', { field: 'attributes', key: 'score', operator: 'neq', value: 10 }, ['llm-call']],
      ['attributes key gt number', { field: 'attributes', key: 'score', operator: 'gt', value: 5 }, ['root-a']],
      ['attributes key gte number', { field: 'attributes', key: 'score', operator: 'gte', value: 2.5 }, ['llm-call', 'root-a']],
      ['attributes key lt number', { field: 'attributes', key: 'score', operator: 'lt', value: 10 }, ['llm-call']],
      ['attributes key lte number', { field: 'attributes', key: 'score', operator: 'lte', value: 10 }, ['llm-call', 'root-a']],
      ['attributes key btwn numbers', { field: 'attributes', key: 'score', operator: 'btwn', value: [2, 3] }, ['llm-call']],
      ['attributes key btwn strings', { field: 'attributes', key: 'label', operator: 'btwn', value: ['alpha', 'beta'] }, ['llm-call', 'root-a']],
      ['attributes key gt string (bytewise: "Alpha" < "alpha")', { field: 'attributes', key: 'label', operator: 'gt', value: 'alpha' }, ['llm-call', 'tool_50%']],
      ['attributes key lt string', { field: 'attributes', key: 'label', operator: 'lt', value: 'alpha' }, ['tool_other']],
      ['attributes key eq true', { field: 'attributes', key: 'flag', operator: 'eq', value: true }, ['root-a']],
      ['attributes key eq false', { field: 'attributes', key: 'flag', operator: 'eq', value: false }, ['llm-call']],
      ['attributes key neq true (missing excluded)', { field: 'attributes', key: 'flag', operator: 'neq', value: true }, ['llm-call']],
      ['attributes key in strings', { field: 'attributes', key: 'label', operator: 'in', value: ['alpha', 'gamma'] }, ['root-a', 'tool_50%']],
      ['attributes key not_in strings', { field: 'attributes', key: 'label', operator: 'not_in', value: ['alpha', 'gamma'] }, ['llm-call', 'tool_other']],
      ['attributes key in numbers', { field: 'attributes', key: 'score', operator: 'in', value: [10, 2.5] }, ['llm-call', 'root-a']],
      ['attributes key in booleans', { field: 'attributes', key: 'flag', operator: 'in', value: [true] }, ['root-a']],
      ['attributes key contains (case-sensitive)', { field: 'attributes', key: 'label', operator: 'contains', value: 'lph' }, ['root-a', 'tool_other']],
      ['attributes key startswith', { field: 'attributes', key: 'label', operator: 'startswith', value: 'A' }, ['tool_other']],
      ['attributes key endswith', { field: 'attributes', key: 'label', operator: 'endswith', value: 'ta' }, ['llm-call']],
      ['attributes key like', { field: 'attributes', key: 'ag.type', operator: 'like', value: 'work%' }, ['root-a']],
      ['attributes key with a quote in the value', { field: 'attributes', key: 'odd', operator: 'eq', value: "it's" }, ['tool_50%']],
    ])('%s', async (_name, condition, expected) => {
      expect(await names(one(condition))).toEqual(expected);
    });

    it('nests and / or / not', async () => {
      const filter = {
        operator: 'or',
        conditions: [
          { operator: 'and', conditions: [{ field: 'span_type', operator: 'eq', value: 'tool' }, { operator: 'not', conditions: [{ field: 'attributes', key: 'label', operator: 'eq', value: 'gamma' }] }] },
          { field: 'span_name', operator: 'eq', value: 'root-a' },
        ],
      };
      expect(await names(filter)).toEqual(['root-a', 'tool_other']);
    });

    it('not negates the and of its conditions, and is an exact complement even over missing values', async () => {
      expect(await names({ operator: 'not', conditions: [{ field: 'span_type', operator: 'eq', value: 'tool' }, { field: 'trace_type', operator: 'eq', value: 'annotation' }] })).toEqual(['llm-call', 'root-a', 'tool_50%']);
      expect(await names({ operator: 'not', conditions: [{ field: 'status_message', operator: 'eq', value: 'timeout after 30s' }] })).toEqual(['root-a', 'tool_50%', 'tool_other']);
      expect(await names({ operator: 'not', conditions: [{ field: 'attributes', key: 'flag', operator: 'eq', value: true }] })).toEqual(['llm-call', 'tool_50%', 'tool_other']);
    });

    it('an empty and matches everything, an empty or nothing', async () => {
      expect(await names({ conditions: [] })).toEqual(ALL);
      expect(await names({ operator: 'or', conditions: [] })).toEqual([]);
    });

    it('never returns another project’s spans, even for filters that match them', async () => {
      const crafted = { operator: 'or', conditions: [{ field: 'trace_id', operator: 'eq', value: TA }, { field: 'span_name', operator: 'eq', value: 'other-project' }, { conditions: [] }] };
      expect(await names(crafted)).toEqual(ALL);
      expect(await names({ operator: 'not', conditions: [{ field: 'span_name', operator: 'neq', value: 'x' }] })).toEqual([]);
      expect(await names(crafted, B)).toEqual(['other-project']);
      expect(() => parseSpanQuery({ filter: one({ field: 'project_id', operator: 'eq', value: B }) })).toThrow(InvalidQueryError);
    });

    it('treats injection attempts in values as plain values', async () => {
      const attempts = ["x' or '1'='1", "'); delete from spans; --", "%' or true --", '\\', '$1', "'||(select span_name from spans limit 1)||'"];
      for (const value of attempts) {
        expect(await names(one({ field: 'span_name', operator: 'eq', value }))).toEqual([]);
        expect(await names(one({ field: 'span_name', operator: 'contains', value }))).toEqual([]);
        expect(await names(one({ field: 'span_name', operator: 'in', value: [value, `${value}"`] }))).toEqual([]);
        expect(await names(one({ field: 'attributes', key: 'label', operator: 'eq', value }))).toEqual([]);
        expect(await names(one({ field: 'attributes', operator: 'has', value: { label: value } }))).toEqual([]);
        expect(await names(one({ field: 'attributes', key: 'user', operator: 'is', value: { id: value } }))).toEqual([]);
      }
      const { rows } = await sql<{ n: number }>`select count(*)::int as n from spans`.execute(test.db);
      expect(rows[0].n).toBe(5);
    });

    it('addresses a key that holds dots (stored flat by a REST caller) as an array of keys, and the nested path by the dotted form', async () => {
      const C = projectId('filters-flat-keys');
      await insert(C, [
        { span_name: 'flat', trace_id: TA, span_id: S.root, start_time: '2026-11-22T10:00:00.000000Z', attributes: { 'gen_ai.request.model': 'gpt-4o' } },
        { span_name: 'nested', trace_id: TA, span_id: S.llm, start_time: '2026-11-22T10:00:01.000000Z', attributes: { gen_ai: { request: { model: 'gpt-4o' } } } },
      ]);
      const model = (key: unknown) => names(one({ field: 'attributes', key, operator: 'eq', value: 'gpt-4o' }), C);
      expect(await model(['gen_ai.request.model'])).toEqual(['flat']);
      expect(await model('gen_ai.request.model')).toEqual(['nested']);
      expect(await model(['gen_ai', 'request', 'model'])).toEqual(['nested']);
    });

    it('rejects injection in keys and fields as a bad request, and the compiler binds them even unvalidated', async () => {
      expect(() => parseSpanQuery({ filter: one({ field: 'attributes', key: "label') or true --", operator: 'exists' }) })).toThrow(InvalidQueryError);
      expect(() => parseSpanQuery({ filter: one({ field: 'span_name" or true --', operator: 'exists' }) })).toThrow(InvalidQueryError);
      // Straight to the DAO, skipping the parser: the key is a bound text[] and unknown fields never reach SQL.
      const keyed: SpanQuery = { focus: 'span', filter: { operator: 'and', conditions: [{ field: 'attributes', key: ["label') or true --", 'x"}'], operator: 'exists' }] } };
      expect((await querySpans(test.db, A, keyed)).spans).toEqual([]);
      const fielded: SpanQuery = { focus: 'span', filter: { operator: 'and', conditions: [{ field: 'span_name" is not null or "span_name', operator: 'exists' }] } };
      await expect(querySpans(test.db, A, fielded)).rejects.toThrow(InvalidQueryError);
    });

    it('returns spans as stored, with microsecond times and hex ids', async () => {
      const page = await query(A, { filter: one({ field: 'span_id', operator: 'eq', value: S.llm }) });
      expect(page).toEqual({
        next: null,
        spans: [{
          project_id: A, trace_id: TA, span_id: S.llm, parent_id: S.root, trace_type: 'invocation', span_type: 'llm',
          span_kind: 'SPAN_KIND_CLIENT', span_name: 'llm-call', start_time: '2026-11-22T10:00:00.500000Z', end_time: '2026-11-22T10:00:01.500000Z',
          status_code: 'STATUS_CODE_ERROR', status_message: 'timeout after 30s',
          attributes: { gen_ai: { usage: { input_tokens: 3, output_tokens: 4 } }, score: 2.5, label: 'beta', flag: false, ag: { tags: ['x', 'y'] } },
          references: null, links: null, hashes: null, events: null, exception: { type: 'TimeoutError' },
          created_at: '2026-11-23T00:00:00.000002Z', updated_at: '2026-11-23T00:00:00.000002Z', created_by_id: USER_2, updated_by_id: USER_2,
        }],
      });
    });
  });

  describe('paging', () => {
    const P = projectId('paging');
    const SHARED = '2026-11-22T12:00:00.000000Z';
    let expectedAscending: string[];

    beforeAll(async () => {
      const seeds: Seed[] = [];
      for (let i = 0; i < 1050; i += 1) {
        // 300 spans share one start time; the other 750 are one microsecond apart around it.
        const k = i - 300;
        const micros = i < 300 ? 0 : k < 375 ? k - 375 : k - 374;
        const start = new Date(Date.parse(SHARED) + Math.floor(micros / 1000)).toISOString().slice(0, 23);
        const sub = String(((micros % 1000) + 1000) % 1000).padStart(3, '0');
        seeds.push({ span_name: `p${i}`, trace_id: traceId(`paging-${i % 40}`), start_time: `${start}${sub}Z` });
      }
      const spans = await insert(P, seeds);
      expectedAscending = spans
        .map((s) => [s.start_time, s.trace_id, s.span_id, s.span_name] as const)
        .sort((a, b) => (a[0] !== b[0] ? (a[0] < b[0] ? -1 : 1) : a[1] !== b[1] ? (a[1] < b[1] ? -1 : 1) : a[2] < b[2] ? -1 : 1))
        .map((s) => s[3]);
    });

    it.each(['ascending', 'descending'])('returns every span exactly once in %s order', async (order) => {
      const pages = await everyPage(P, { windowing: { limit: 97, order } });
      expect(pages.map((p) => p.length)).toEqual([...Array(10).fill(97), 1050 - 970]);
      const names = pages.flat().map((s) => s.span_name);
      expect(new Set(names).size).toBe(1050);
      expect(names).toEqual(order === 'ascending' ? expectedAscending : [...expectedAscending].reverse());
    });

    it('defaults to descending pages of 100 and ends with next = null', async () => {
      const first = await query(P, {});
      expect(first.spans).toHaveLength(100);
      expect(first.spans.map((s) => s.span_name)).toEqual([...expectedAscending].reverse().slice(0, 100));
      const last = await query(P, { windowing: { limit: 1000, next: (await query(P, { windowing: { limit: 1000 } })).next } });
      expect(last.spans).toHaveLength(50);
      expect(last.next).toBeNull();
    });

    it('orders microsecond-distinct start times and windows them exactly (oldest inclusive, newest exclusive)', async () => {
      const window = { oldest: '2026-11-22T12:00:00.000001Z', newest: '2026-11-22T12:00:00.000004Z', order: 'ascending' };
      const page = await query(P, { windowing: window });
      expect(page.spans.map((s) => s.start_time)).toEqual(['2026-11-22T12:00:00.000001Z', '2026-11-22T12:00:00.000002Z', '2026-11-22T12:00:00.000003Z']);
      const paged = await everyPage(P, { windowing: { ...window, limit: 1 } });
      expect(paged.flat().map((s) => s.start_time)).toEqual(page.spans.map((s) => s.start_time));
    });

    it('pages a filtered window of the shared start time', async () => {
      const filter = { conditions: [{ field: 'start_time', operator: 'eq', value: SHARED }] };
      const pages = await everyPage(P, { filter, windowing: { limit: 7, order: 'descending' } });
      const names = pages.flat().map((s) => s.span_name);
      expect(names).toHaveLength(300);
      expect(names).toEqual(expectedAscending.filter((n) => Number(n.slice(1)) < 300).reverse());
    });

    it('rejects a cursor reused with another filter or window, which would start the page where that query never was', async () => {
      const filter = { conditions: [{ field: 'start_time', operator: 'eq', value: SHARED }] };
      const window = { oldest: '2026-11-22T00:00:00Z', newest: '2026-11-23T00:00:00Z' };
      const { next } = await query(P, { filter, windowing: { ...window, limit: 5 } });
      const other = { conditions: [{ field: 'span_name', operator: 'startswith', value: 's1' }] };
      const refusal = {
        field: 'windowing.next',
        reason: 'the cursor continues a query with another filter or window: send the same filter and window as the page that returned it, or start again without it',
      };
      for (const body of [
        { filter: other, windowing: { ...window, next } },
        { windowing: { ...window, next } },
        { filter, windowing: { oldest: window.oldest, next } },
        { filter, windowing: { ...window, newest: '2026-11-24T00:00:00Z', next } },
      ]) {
        await expect(query(P, body)).rejects.toMatchObject(refusal);
      }
      // The same selection continues, whatever the page size or the order its keys come in.
      const same = await query(P, { windowing: { limit: 2, next, newest: window.newest, oldest: window.oldest }, filter });
      expect(same.spans).toHaveLength(2);
    });

    it('rejects a cursor reused with another order or focus, or tampered with', async () => {
      const { next } = await query(P, { windowing: { limit: 5, order: 'ascending' } });
      expect(next).toEqual(expect.any(String));
      const run = (body: unknown) => query(P, body);
      await expect(run({ windowing: { next, order: 'descending' } })).rejects.toThrow(InvalidQueryError);
      await expect(run({ windowing: { next } })).rejects.toMatchObject({ field: 'windowing.next' });
      await expect(run({ focus: 'trace', windowing: { next, order: 'ascending' } })).rejects.toMatchObject({ field: 'windowing.next' });
      // Issued for this very query (no filter, no window), its position tampered with.
      const forged = Buffer.from(JSON.stringify([1, cursorTag('span:ascending', {}), "2026-11-22T12:00:00.000000Z' or 1=1", 'ab', 'cd'])).toString('base64url');
      await expect(run({ windowing: { next: forged, order: 'ascending' } })).rejects.toMatchObject({ field: 'windowing.next', reason: 'not a cursor returned by this API' });
      await expect(run({ windowing: { next: 'bm90LWpzb24', order: 'ascending' } })).rejects.toMatchObject({ field: 'windowing.next', reason: 'not a cursor returned by this API' });
    });
  });

  describe('focus trace', () => {
    const P = projectId('traces');
    const starts = ['10:00', '10:01', '10:01', '10:02', '10:03', '10:04', '10:05'];
    const withLlm = new Set([2, 3, 5, 7]);

    beforeAll(async () => {
      const seeds: Seed[] = [];
      starts.forEach((hm, index) => {
        const n = index + 1;
        const trace = traceId(`focus-${n}`);
        const base = `2026-11-22T${hm}`;
        seeds.push({ span_name: `t${n}-root`, trace_id: trace, span_id: spanId(`t${n}-root`), start_time: `${base}:00.000000Z`, span_type: 'workflow' });
        // The second child starts a minute into the next trace's start: windows must go by the trace start, not by any span.
        const later = `2026-11-22T10:0${Number(hm.slice(3)) + 1}:30.000000Z`;
        seeds.push({ span_name: `t${n}-b`, trace_id: trace, parent_id: spanId(`t${n}-root`), start_time: later, span_type: withLlm.has(n) ? 'llm' : 'tool' });
        seeds.push({ span_name: `t${n}-a`, trace_id: trace, parent_id: spanId(`t${n}-root`), start_time: `${base}:10.000000Z`, span_type: 'tool' });
      });
      await insert(P, seeds);
      // Another project's span in trace 4, earlier than all: it must not move trace 4's start.
      await insert(projectId('traces-other'), [{ span_name: 'elsewhere', trace_id: traceId('focus-4'), start_time: '2026-11-22T09:00:00.000000Z', span_type: 'llm' }]);
    });

    /** Trace numbers in the order expected: by start, then trace id. */
    const ordered = (ns: number[], order: 'ascending' | 'descending') => {
      const sorted = [...ns].sort((a, b) => (starts[a - 1] !== starts[b - 1] ? (starts[a - 1] < starts[b - 1] ? -1 : 1) : traceId(`focus-${a}`) < traceId(`focus-${b}`) ? -1 : 1));
      return order === 'ascending' ? sorted : sorted.reverse();
    };
    const wholeTrace = (n: number) => [`t${n}-root`, `t${n}-a`, `t${n}-b`];

    it.each(['ascending', 'descending'] as const)('returns whole traces, limit counting traces, in %s order', async (order) => {
      const filter = { conditions: [{ field: 'span_type', operator: 'eq', value: 'llm' }] };
      const pages = await everyPage(P, { focus: 'trace', filter, windowing: { limit: 2, order } });
      const expected = ordered([...withLlm], order);
      expect(pages.map((p) => p.map((s) => s.span_name))).toEqual([
        [...wholeTrace(expected[0]), ...wholeTrace(expected[1])],
        [...wholeTrace(expected[2]), ...wholeTrace(expected[3])],
      ]);
    });

    it('windows on the trace start and pages traces sharing a start time by trace id', async () => {
      const pages = await everyPage(P, { focus: 'trace', windowing: { oldest: '2026-11-22T10:01:00Z', newest: '2026-11-22T10:03:00Z', limit: 1, order: 'ascending' } });
      expect(pages.map((p) => p.map((s) => s.span_name))).toEqual(ordered([2, 3, 4], 'ascending').map(wholeTrace));
      // Matched by their roots alone, which start exactly where the cursor between them stands.
      const roots = { conditions: [{ field: 'span_type', operator: 'eq', value: 'workflow' }] };
      const byRoots = await everyPage(P, { focus: 'trace', filter: roots, windowing: { oldest: '2026-11-22T10:01:00Z', newest: '2026-11-22T10:02:00Z', limit: 1, order: 'ascending' } });
      expect(byRoots.map((p) => p.map((s) => s.span_name))).toEqual(ordered([2, 3], 'ascending').map(wholeTrace));
    });

    it('selects a trace by any span, including one that is not its root', async () => {
      const filter = { conditions: [{ field: 'span_name', operator: 'eq', value: 't4-a' }] };
      const page = await query(P, { focus: 'trace', filter });
      expect(page).toMatchObject({ next: null });
      expect(page.spans.map((s) => s.span_name)).toEqual(wholeTrace(4));
    });

    it('returns an empty page when nothing matches', async () => {
      expect(await query(P, { focus: 'trace', filter: { conditions: [{ field: 'span_name', operator: 'eq', value: 'nope' }] } })).toEqual({ spans: [], next: null });
    });

    it.each([[6, 2], [7, 2], [8, 2], [9, 3], [3, 1], [100, 5]])('with maxSpans %i, a page holds the whole traces that fit (%i of 3 spans each) and the cursor goes on from there', async (maxSpans, perPage) => {
      const pages: string[][] = [];
      let next: string | null = null;
      do {
        const page = await querySpans(test.db, P, parseSpanQuery({ focus: 'trace', windowing: { limit: 5, order: 'ascending', ...(next ? { next } : {}) } }), { maxSpans });
        pages.push(page.spans.map((s) => s.span_name));
        next = page.next;
      } while (next && pages.length < 20);
      const all = ordered(starts.map((_, i) => i + 1), 'ascending');
      const expected: string[][] = [];
      // limit (5 traces) still caps a page when the spans would allow more.
      for (let i = 0; i < all.length; i += Math.min(perPage, 5)) expected.push(all.slice(i, i + Math.min(perPage, 5)).flatMap(wholeTrace));
      expect(pages).toEqual(expected);
    });

    it('reads the spans it counted: a span written between counting and reading does not take the page past maxSpans', async () => {
      const Q = projectId('traces-arriving');
      const trace = traceId('arriving');
      await insert(Q, [
        { span_name: 'arriving-root', trace_id: trace, span_id: spanId('arriving-root'), start_time: '2026-11-22T10:00:00.000000Z' },
        { span_name: 'arriving-a', trace_id: trace, span_id: spanId('arriving-a'), start_time: '2026-11-22T10:00:01.000000Z' },
      ]);
      // A connection whose read of the page's spans first waits for another span of the trace to commit.
      const pool = createPool(test.url, 1);
      pool.on('connect', (client) => {
        const query = client.query.bind(client) as (...args: unknown[]) => unknown;
        (client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
          const text = typeof args[0] === 'string' ? args[0] : '';
          if (!text.includes('array_position')) return query(...args);
          return insert(Q, [{ span_name: 'arriving-late', trace_id: trace, span_id: spanId('arriving-late'), start_time: '2026-11-22T10:00:02.000000Z' }]).then(() => query(...args));
        };
      });
      const db = createKysely(pool);
      try {
        const page = await querySpans(db, Q, parseSpanQuery({ focus: 'trace' }), { maxSpans: 2 });
        expect(page.spans.map((s) => s.span_name)).toEqual(['arriving-root', 'arriving-a']);
      } finally {
        await db.destroy();
      }
      // The next read sees it, with the trace whole.
      const after = await querySpans(test.db, Q, parseSpanQuery({ focus: 'trace' }), { maxSpans: 3 });
      expect(after.spans.map((s) => s.span_name)).toEqual(['arriving-root', 'arriving-a', 'arriving-late']);
    });

    it.each(['ascending', 'descending'] as const)('a first trace with more spans than maxSpans is a TraceTooLargeError naming it, whose cursor pages on past it (%s)', async (order) => {
      const [first, second] = ordered(starts.map((_, i) => i + 1), order);
      const error = await querySpans(test.db, P, parseSpanQuery({ focus: 'trace', windowing: { order } }), { maxSpans: 2 }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(TraceTooLargeError);
      expect(error).toEqual(new TraceTooLargeError([traceId(`focus-${first}`)], 2));
      const next = (error as TraceTooLargeError).next!;
      const after = await querySpans(test.db, P, parseSpanQuery({ focus: 'trace', windowing: { order, next, limit: 1 } }), { maxSpans: 3 });
      expect(after.spans.map((s) => s.span_name)).toEqual(wholeTrace(second));
    });
  });

  describe('analytics', () => {
    const P = projectId('analytics');
    const costs = (total: Json) => ({ costs: { cumulative: { total } } });
    const X = traceId('x');

    beforeAll(async () => {
      await insert(P, [
        {
          span_name: 'x0', trace_id: X, span_id: spanId('x0'), start_time: '2026-11-22T10:01:00.000000Z', end_time: '2026-11-22T10:01:02.000000Z',
          status_code: 'STATUS_CODE_OK', attributes: { ag: { metrics: { ...costs(0.5), tokens: { cumulative: { total: 100 } } } } },
        },
        {
          span_name: 'x1', trace_id: X, parent_id: spanId('x0'), span_type: 'llm', start_time: '2026-11-22T10:01:00.500000Z', end_time: '2026-11-22T10:01:01.000000Z',
          status_code: 'STATUS_CODE_ERROR', attributes: { ag: { metrics: costs(0.25) }, gen_ai: { usage: { input_tokens: 3, output_tokens: 4 } } },
        },
        {
          span_name: 'x2', trace_id: X, parent_id: spanId('x0'), start_time: '2026-11-22T10:12:00.000000Z', end_time: '2026-11-22T10:12:00.001000Z',
          attributes: { ag: { metrics: { ...costs('abc'), tokens: { cumulative: { total: 7 } } } }, gen_ai: { usage: { input_tokens: 1000 } } },
        },
        {
          span_name: 'y0', start_time: '2026-11-22T10:05:00.000001Z', end_time: '2026-11-22T10:05:00.001501Z',
          status_code: 'STATUS_CODE_ERROR', attributes: { ag: { metrics: costs(1.25) }, gen_ai: { usage: { input_tokens: 10 } } },
        },
        {
          span_name: 'z0', start_time: '2026-11-22T10:29:59.999999Z', end_time: '2026-11-22T10:30:00.000999Z',
          status_code: 'STATUS_CODE_OK', attributes: { ag: { metrics: costs(2) }, gen_ai: { usage: { input_tokens: '5', output_tokens: [1] } } },
        },
        { span_name: 'at-newest', start_time: '2026-11-22T10:35:00.000000Z', attributes: { ag: { metrics: costs(100) } } },
        { span_name: 'before-oldest', start_time: '2026-11-22T09:59:59.999999Z', attributes: { ag: { metrics: costs(100) } } },
      ]);
      await insert(projectId('analytics-other'), [
        // In trace y of the other project, and an llm span: must not make trace y match an llm filter.
        { span_name: 'elsewhere', trace_id: traceId('y0'), span_type: 'llm', start_time: '2026-11-22T10:02:00.000000Z', status_code: 'STATUS_CODE_ERROR', attributes: { ag: { metrics: costs(100) } } },
      ]);
    });

    const ZERO = { count: 0, duration: 0, costs: 0, tokens: 0 };
    const bucket = (hm: string, total: typeof ZERO, errors = ZERO) => ({ timestamp: `2026-11-22T${hm}:00.000000Z`, interval: 10, total, errors });
    const analytics = (body: Record<string, unknown>) =>
      spanAnalytics(test.db, P, parseAnalyticsQuery({ ...body, windowing: { oldest: '2026-11-22T10:00:00Z', newest: '2026-11-22T10:35:00Z', interval: 10 } }));

    it('buckets every span with focus span, zeros for empty buckets', async () => {
      expect(await analytics({})).toEqual([
        bucket('10:00', { count: 3, duration: 2501.5, costs: 2, tokens: 117 }, { count: 2, duration: 501.5, costs: 1.5, tokens: 17 }),
        bucket('10:10', { count: 1, duration: 1, costs: 0, tokens: 7 }),
        bucket('10:20', { count: 1, duration: 1, costs: 2, tokens: 0 }),
        bucket('10:30', ZERO),
      ]);
    });

    it('counts traces by their root spans with focus trace', async () => {
      expect(await analytics({ focus: 'trace' })).toEqual([
        bucket('10:00', { count: 2, duration: 2001.5, costs: 1.75, tokens: 110 }, { count: 1, duration: 1.5, costs: 1.25, tokens: 10 }),
        bucket('10:10', ZERO),
        bucket('10:20', { count: 1, duration: 1, costs: 2, tokens: 0 }),
        bucket('10:30', ZERO),
      ]);
    });

    it("with focus trace, counts the GenAI usage of the spans below a root without tokens of its own, as OTLP traces carry it", async () => {
      const Q = projectId('analytics-otlp');
      const W = traceId('w');
      await insert(Q, [
        { span_name: 'http root', trace_id: W, span_id: spanId('w0'), start_time: '2026-11-22T10:01:00.000000Z', end_time: '2026-11-22T10:01:02.000000Z' },
        { span_name: 'chat', trace_id: W, parent_id: spanId('w0'), start_time: '2026-11-22T10:01:00.100000Z', attributes: { gen_ai: { usage: { input_tokens: 3, output_tokens: 4 } } } },
        { span_name: 'chat again', trace_id: W, parent_id: spanId('w0'), start_time: '2026-11-22T10:13:00.000000Z', attributes: { gen_ai: { usage: { input_tokens: 20 } } } },
      ]);
      const tokens = async (focus: string) =>
        (await spanAnalytics(test.db, Q, parseAnalyticsQuery({ focus, windowing: { oldest: '2026-11-22T10:00:00Z', newest: '2026-11-22T10:20:00Z', interval: 10 } }))).map((b) => [b.total.count, b.total.tokens]);
      // The trace counts once, in its root's bucket, with the usage of the spans below its root (one past the window included).
      expect(await tokens('trace')).toEqual([[1, 27], [0, 0]]);
      expect(await tokens('span')).toEqual([[2, 7], [1, 20]]);
      // A root with usage of its own (an agent span with its run's total) is not summed with the calls below it.
      const R = projectId('analytics-agent');
      const A = traceId('agent');
      await insert(R, [
        { span_name: 'invoke_agent', trace_id: A, span_id: spanId('a0'), start_time: '2026-11-22T10:01:00.000000Z', attributes: { gen_ai: { usage: { input_tokens: 30, output_tokens: 12 } } } },
        { span_name: 'chat', trace_id: A, parent_id: spanId('a0'), start_time: '2026-11-22T10:01:00.100000Z', attributes: { gen_ai: { usage: { input_tokens: 30, output_tokens: 12 } } } },
      ]);
      const agent = await spanAnalytics(test.db, R, parseAnalyticsQuery({ focus: 'trace', windowing: { oldest: '2026-11-22T10:00:00Z', newest: '2026-11-22T10:10:00Z', interval: 10 } }));
      expect(agent.map((b) => [b.total.count, b.total.tokens])).toEqual([[1, 42]]);
    });

    describe('a trace with several roots (spans posted without a parent are each one)', () => {
      const M = projectId('analytics-multi-root');
      const T = traceId('multi');
      const windowFrom = (oldest: string, newest: string) =>
        spanAnalytics(test.db, M, parseAnalyticsQuery({ focus: 'trace', windowing: { oldest, newest, interval: 10 } }));
      const tokens = (total: number) => ({ ag: { metrics: { tokens: { cumulative: { total } } } } });
      const usage = (input_tokens: number) => ({ gen_ai: { usage: { input_tokens } } });

      beforeAll(async () => {
        await insert(M, [
          {
            span_name: 'm0', trace_id: T, start_time: '2026-11-22T10:02:00.000000Z', end_time: '2026-11-22T10:02:01.000000Z',
            status_code: 'STATUS_CODE_OK', attributes: { ag: { metrics: { ...costs(1), tokens: { cumulative: { total: 5 } } } } },
          },
          {
            span_name: 'm1', trace_id: T, start_time: '2026-11-22T10:13:00.000000Z', end_time: '2026-11-22T10:13:00.500000Z',
            status_code: 'STATUS_CODE_ERROR', attributes: { ag: { metrics: costs(2) }, gen_ai: { usage: { input_tokens: 7 } } },
          },
          { span_name: 'm1-call', trace_id: T, parent_id: spanId('m1'), start_time: '2026-11-22T10:13:00.100000Z', attributes: { gen_ai: { usage: { input_tokens: 100 } } } },
          // Roots on both sides of 10:00: the trace belongs to the window holding its first root.
          { span_name: 'early', trace_id: traceId('straddling'), start_time: '2026-11-22T09:59:00.000000Z', attributes: tokens(1) },
          { span_name: 'late', trace_id: traceId('straddling'), start_time: '2026-11-22T10:01:00.000000Z', attributes: tokens(2) },
          // A root with a figure (a cumulative total), which covers the spans below it, and ends last; a root without one, whose
          // spans count down to the first with a figure of its own; a span whose parent is not stored is below no root.
          { span_name: 'figured', trace_id: traceId('mixed'), start_time: '2026-11-22T10:21:00.000000Z', end_time: '2026-11-22T10:25:00.000000Z', attributes: tokens(50) },
          { span_name: 'figured-call', trace_id: traceId('mixed'), parent_id: spanId('figured'), start_time: '2026-11-22T10:21:00.100000Z', attributes: usage(7) },
          { span_name: 'bare', trace_id: traceId('mixed'), start_time: '2026-11-22T10:22:00.000000Z' },
          { span_name: 'bare-step', trace_id: traceId('mixed'), parent_id: spanId('bare'), start_time: '2026-11-22T10:22:00.050000Z' },
          { span_name: 'bare-call', trace_id: traceId('mixed'), parent_id: spanId('bare-step'), start_time: '2026-11-22T10:22:00.100000Z', attributes: usage(9) },
          { span_name: 'bare-call-call', trace_id: traceId('mixed'), parent_id: spanId('bare-call'), start_time: '2026-11-22T10:22:00.200000Z', attributes: usage(1) },
          { span_name: 'orphan', trace_id: traceId('mixed'), parent_id: spanId('never stored'), start_time: '2026-11-22T10:23:00.000000Z', attributes: usage(4) },
          // An agent span (below an HTTP root) carrying its run's usage, whose model call and the tool below it carry
          // theirs: counted once, beside the usage below the other root.
          { span_name: 'http', trace_id: traceId('agent+http'), start_time: '2026-11-22T10:41:00.000000Z' },
          { span_name: 'agent', trace_id: traceId('agent+http'), parent_id: spanId('http'), start_time: '2026-11-22T10:41:00.050000Z', attributes: usage(42) },
          { span_name: 'agent-call', trace_id: traceId('agent+http'), parent_id: spanId('agent'), start_time: '2026-11-22T10:41:00.100000Z', attributes: usage(42) },
          { span_name: 'agent-tool', trace_id: traceId('agent+http'), parent_id: spanId('agent-call'), start_time: '2026-11-22T10:41:00.200000Z', attributes: usage(5) },
          { span_name: 'other-http', trace_id: traceId('agent+http'), start_time: '2026-11-22T10:42:00.000000Z' },
          { span_name: 'other-call', trace_id: traceId('agent+http'), parent_id: spanId('other-http'), start_time: '2026-11-22T10:42:00.100000Z', attributes: usage(9) },
        ]);
      });

      it('counts the trace once, in its first root\'s bucket, measured over all its roots', async () => {
        expect(await windowFrom('2026-11-22T10:00:00Z', '2026-11-22T10:30:00Z')).toEqual([
          // Duration from the first root's start to the latest end among its roots; failed as one root failed; the roots' costs
          // and own tokens summed (m1's call is below m1, whose own usage stands for it).
          bucket('10:00', { count: 1, duration: 660500, costs: 3, tokens: 12 }, { count: 1, duration: 660500, costs: 3, tokens: 12 }),
          bucket('10:10', ZERO),
          bucket('10:20', { count: 1, duration: 240000, costs: 0, tokens: 59 }),
        ]);
        const agent = await windowFrom('2026-11-22T10:40:00Z', '2026-11-22T10:50:00Z');
        expect(agent.map((b) => [b.total.count, b.total.tokens])).toEqual([[1, 51]]);
      });

      it('measures the trace over roots past newest too, and finds it by a span outside the window', async () => {
        // 10:00-10:10 holds m0 only: m1 (past newest) still adds its end, its failure, its costs and its usage.
        expect(await windowFrom('2026-11-22T10:00:00Z', '2026-11-22T10:10:00Z')).toEqual([
          bucket('10:00', { count: 1, duration: 660500, costs: 3, tokens: 12 }, { count: 1, duration: 660500, costs: 3, tokens: 12 }),
        ]);
        const filtered = await spanAnalytics(test.db, M, parseAnalyticsQuery({
          focus: 'trace', filter: { conditions: [{ field: 'span_name', operator: 'eq', value: 'm1-call' }] },
          windowing: { oldest: '2026-11-22T10:00:00Z', newest: '2026-11-22T10:10:00Z', interval: 10 },
        }));
        expect(filtered.map((b) => b.total.count)).toEqual([1]);
      });

      it('counts a trace whose roots straddle oldest in the window of its first root only', async () => {
        const earlier = await windowFrom('2026-11-22T09:50:00Z', '2026-11-22T10:00:00Z');
        expect(earlier.map((b) => [b.total.count, b.total.tokens])).toEqual([[1, 3]]);
      });

      it('does not count a trace in a window holding a later root but not its first', async () => {
        // 10:10-10:20 holds m1, not m0.
        const middle = await windowFrom('2026-11-22T10:10:00Z', '2026-11-22T10:20:00Z');
        expect(middle.map((b) => b.total.count)).toEqual([0]);
      });
    });

    it('applies the filter to spans (focus span) or to any span of the trace (focus trace)', async () => {
      const filter = { conditions: [{ field: 'span_type', operator: 'eq', value: 'llm' }] };
      expect(await analytics({ filter })).toEqual([
        bucket('10:00', { count: 1, duration: 500, costs: 0.25, tokens: 7 }, { count: 1, duration: 500, costs: 0.25, tokens: 7 }),
        bucket('10:10', ZERO),
        bucket('10:20', ZERO),
        bucket('10:30', ZERO),
      ]);
      expect(await analytics({ focus: 'trace', filter })).toEqual([
        bucket('10:00', { count: 1, duration: 2000, costs: 0.5, tokens: 100 }),
        bucket('10:10', ZERO),
        bucket('10:20', ZERO),
        bucket('10:30', ZERO),
      ]);
    });

    it('reads a sum past the largest double as the largest double, rather than failing the query', async () => {
      const Q = projectId('analytics-huge');
      const huge = { ag: { metrics: { ...costs(1e308), tokens: { cumulative: { total: -1e308 } } } } };
      await insert(Q, [
        { span_name: 'h0', start_time: '2026-11-22T10:01:00.000000Z', status_code: 'STATUS_CODE_ERROR', attributes: huge },
        { span_name: 'h1', start_time: '2026-11-22T10:02:00.000000Z', status_code: 'STATUS_CODE_ERROR', attributes: huge },
        { span_name: 'h2', start_time: '2026-11-22T10:11:00.000000Z', attributes: { ag: { metrics: costs(1e308) } } },
      ]);
      const buckets = await spanAnalytics(test.db, Q, parseAnalyticsQuery({ windowing: { oldest: '2026-11-22T10:00:00Z', newest: '2026-11-22T10:20:00Z', interval: 10 } }));
      expect(buckets.map((b) => [b.total.costs, b.total.tokens, b.errors.costs, b.errors.tokens])).toEqual([
        [Number.MAX_VALUE, -Number.MAX_VALUE, Number.MAX_VALUE, -Number.MAX_VALUE],
        [1e308, 0, 0, 0],
      ]);
    });

    it('ends the last bucket at newest when the interval does not divide the window (z0 at 10:29:59.999999 is out)', async () => {
      const buckets = await spanAnalytics(test.db, P, parseAnalyticsQuery({ windowing: { oldest: '2026-11-22T10:00:00Z', newest: '2026-11-22T10:25:00Z', interval: 20 } }));
      expect(buckets.map((b) => [b.timestamp, b.total.count])).toEqual([['2026-11-22T10:00:00.000000Z', 4], ['2026-11-22T10:20:00.000000Z', 0]]);
    });
  });
});
