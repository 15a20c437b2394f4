import { CONDITION_OPERATORS, FOCUSES, LOGICAL_OPERATORS } from './span-query';
import { DEFAULT_INTERVAL_MINUTES, MAX_BUCKETS, MAX_CONDITIONS, MAX_FILTER_DEPTH, MAX_INTERVAL_MINUTES, MAX_LIMIT, QUERYABLE_FIELDS } from './span-query.parser';

/**
 * The query bodies as OpenAPI, for /docs. The parser (span-query.parser.ts)
 * is hand-written, strict and the authority; this states its shape from the
 * same constants so the two cannot drift in the values they name. A filter
 * nests filters, which the schema shows one level deep and describes.
 * Every optional part is nullable: the parser reads null as absent (a
 * client looping on a page's `next` sends the last one's null).
 */

/** An optional part, which null leaves out as absence does (an enum lists null too, as OpenAPI 3.0.3 asks). */
const optional = <T extends object>(schema: T) => {
  const values = (schema as { enum?: readonly unknown[] }).enum;
  return { ...schema, nullable: true, ...(values && { enum: [...values, null] }) };
};

const TIME = { type: 'string', format: 'date-time', description: 'ISO-8601 with a zone (Z, ±hh:mm, ±hhmm or ±hh), years 1900–2299, microsecond precision' };

const CONDITION = {
  type: 'object',
  required: ['field'],
  additionalProperties: false,
  properties: {
    field: { type: 'string', enum: QUERYABLE_FIELDS },
    key: {
      // Null in one branch only: a oneOf matched by two is refused.
      oneOf: [optional({ type: 'string' }), { type: 'array', items: { type: 'string' }, minItems: 1, maxItems: 20 }],
      description:
        'A path inside a JSON field (attributes, events, ...): dotted, "ag.metrics.costs", or an array of keys, ["gen_ai.request.model"], ' +
        'for keys that hold dots themselves (REST stores attributes as sent; OTLP nests dotted keys)',
    },
    operator: optional({ type: 'string', enum: [...CONDITION_OPERATORS], default: 'is' }),
    value: { description: 'What the operator compares with: a value, [a, b] for btwn, a list for in / not_in; none for exists / not_exists' },
  },
};

const FILTER = {
  type: 'object',
  required: ['conditions'],
  additionalProperties: false,
  description: `and / or / not over conditions and nested filters (at most ${MAX_FILTER_DEPTH} levels, ${MAX_CONDITIONS} conditions and nested filters in all)`,
  properties: {
    operator: optional({ type: 'string', enum: [...LOGICAL_OPERATORS], default: 'and' }),
    conditions: {
      type: 'array',
      // anyOf: a condition is an object too, so under oneOf (exactly one branch) no condition would validate.
      items: { anyOf: [CONDITION, { type: 'object', required: ['conditions'], description: 'A nested filter: { operator, conditions }' }] },
    },
  },
};

const FOCUS = optional({
  type: 'string',
  enum: [...FOCUSES],
  default: 'span',
  description:
    'span: matching spans; trace: every span of the traces with a matching span. A trace page ranks every trace with a matching span ' +
    'in the window by its start before it is cut: on a large project, bound the window with `oldest` (only a lower bound narrows that read)',
});

/** Analytics measures a trace once, from its root spans: what it counts differs from what a query returns. */
const ANALYTICS_FOCUS = {
  ...FOCUS,
  description:
    'span: every matching span; trace: each trace with a matching span once, in the bucket of its first root span (parent_id null; a span ' +
    'posted without a parent is one, so a trace may have several) and only in the window holding that root. Measured over its roots: an ' +
    'error when any root is; duration from the first root\'s start to the latest end among its roots; costs summed over the roots; ' +
    'tokens: from each root down, a span\'s own figure (a cumulative total, else its GenAI usage: an agent span\'s covers the calls below ' +
    'it) where it has one, else the figures below it (a span whose parent is not stored is below no root, and not counted). A trace ' +
    'without a stored root (not arrived yet, or whose local root has a remote parent) is not counted',
};

export const SPAN_QUERY_BODY = {
  type: 'object',
  additionalProperties: false,
  properties: {
    focus: FOCUS,
    filter: optional(FILTER),
    windowing: optional({
      type: 'object',
      additionalProperties: false,
      properties: {
        oldest: optional({ ...TIME, description: `Inclusive lower bound on start_time. ${TIME.description}` }),
        newest: optional({ ...TIME, description: `Exclusive upper bound on start_time. ${TIME.description}` }),
        limit: optional({ type: 'integer', minimum: 1, maximum: MAX_LIMIT, description: 'Spans per page (focus span; at most MAX_RESPONSE_ITEMS) or traces per page (focus trace). A page may hold fewer: `next` being null, not the count, says it is the last' }),
        order: optional({ type: 'string', enum: ['ascending', 'descending'] }),
        next: optional({ type: 'string', description: 'The previous page\'s `next`, with the same focus, order, filter and window (another is a 400; the limit may change)' }),
      },
    }),
  },
  example: {
    focus: 'span',
    filter: { operator: 'and', conditions: [{ field: 'status_code', operator: 'eq', value: 'STATUS_CODE_ERROR' }, { field: 'attributes', key: 'gen_ai.request.model', operator: 'eq', value: 'gpt-4o' }] },
    windowing: { oldest: '2026-11-01T00:00:00Z', newest: '2026-12-01T00:00:00Z', limit: 100, order: 'descending' },
  },
};

export const ANALYTICS_QUERY_BODY = {
  type: 'object',
  required: ['windowing'],
  additionalProperties: false,
  properties: {
    focus: ANALYTICS_FOCUS,
    filter: optional(FILTER),
    windowing: {
      type: 'object',
      required: ['oldest', 'newest'],
      additionalProperties: false,
      properties: {
        oldest: { ...TIME, description: `Start of the first bucket. ${TIME.description}` },
        newest: { ...TIME, description: `End of the last bucket (exclusive). ${TIME.description}` },
        interval: optional({ type: 'integer', minimum: 1, maximum: MAX_INTERVAL_MINUTES, default: DEFAULT_INTERVAL_MINUTES, description: `Bucket width in minutes; at most ${MAX_BUCKETS} buckets` }),
      },
    },
  },
  example: { windowing: { oldest: '2026-11-01T00:00:00Z', newest: '2026-11-02T00:00:00Z', interval: 60 } },
};
