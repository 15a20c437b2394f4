import { z } from 'zod';
import { jsonArraySchema, jsonObjectSchema, textSchema } from '../../http/json-value';
import { SPAN_KINDS, SPAN_TYPES, STATUS_CODES, TRACE_TYPES } from '../span';
import { normalizeTimestamp } from '../timestamp';

const hexId = (length: number) =>
  z
    .string()
    .regex(new RegExp(`^[0-9a-fA-F]{${length}}$`), `must be ${length} hex characters`)
    .refine((s) => !/^0+$/.test(s), 'must not be all zeros')
    .transform((s) => s.toLowerCase());

export const traceIdSchema = hexId(32);
export const spanIdSchema = hexId(16);

export const timestampSchema = z
  .string()
  .max(64)
  .transform((value, ctx) => {
    const normalized = normalizeTimestamp(value);
    if (normalized === null) {
      // Fatal, as a failed type or format check is: a plain issue leaves z.NEVER in place of the time and the
      // rules comparing it (end not before start) would still run and report a second, false error.
      ctx.addIssue({
        code: z.ZodIssueCode.custom,
        message: `must be an ISO-8601 time with a zone between years 1900 and 2299, got "${value.slice(0, 40)}"`,
        fatal: true,
      });
      return z.NEVER;
    }
    return normalized;
  });

/**
 * Rules spans and nodes share, each written once over the fields' names, so
 * the two APIs refuse the same things in the same words.
 */
export const orderRules = {
  /** An item may take no time, but cannot end before it starts. */
  endNotBeforeStart<K extends string>(item: Record<K, string>, ctx: z.RefinementCtx, start: K, end: K): void {
    if (item[end] < item[start]) ctx.addIssue({ code: z.ZodIssueCode.custom, path: [end], message: `must not be before ${start}` });
  },
  /** An item is not its own parent: a tree would loop there. */
  notOwnParent<K extends string>(item: Record<K, string | null>, ctx: z.RefinementCtx, id: K, parent: K): void {
    if (item[parent] === item[id]) ctx.addIssue({ code: z.ZodIssueCode.custom, path: [parent], message: `must differ from ${id}` });
  },
  /**
   * A query window is [oldest, newest): newest at or before oldest can match
   * nothing, so it is a mistake to name, not an empty answer (span queries
   * answer windowing the same way, span-query.parser.ts).
   */
  newestAfterOldest(window: { oldest?: string; newest?: string }, ctx: z.RefinementCtx): void {
    if (window.oldest !== undefined && window.newest !== undefined && window.newest <= window.oldest) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['newest'], message: 'must be later than oldest' });
    }
  },
};

export const spanInputSchema = z
  .object({
    trace_id: traceIdSchema,
    span_id: spanIdSchema,
    parent_id: spanIdSchema.nullable().default(null),
    trace_type: z.enum(TRACE_TYPES).default('invocation'),
    span_type: z.enum(SPAN_TYPES).default('unknown'),
    span_kind: z.enum(SPAN_KINDS).default('SPAN_KIND_INTERNAL'),
    span_name: textSchema(z.string().min(1, 'must not be empty').max(1024)),
    start_time: timestampSchema,
    end_time: timestampSchema,
    status_code: z.enum(STATUS_CODES).default('STATUS_CODE_UNSET'),
    status_message: textSchema(z.string().max(10_000)).nullable().default(null),
    attributes: jsonObjectSchema.default({}),
    references: jsonArraySchema.nullable().default(null),
    links: jsonArraySchema.nullable().default(null),
    hashes: jsonArraySchema.nullable().default(null),
    events: jsonArraySchema.nullable().default(null),
    exception: jsonObjectSchema.nullable().default(null),
  })
  .strict()
  .superRefine((span, ctx) => {
    orderRules.endNotBeforeStart(span, ctx, 'start_time', 'end_time');
    orderRules.notOwnParent(span, ctx, 'span_id', 'parent_id');
  });

/** A batch is atomic; the same span twice in one batch is a caller error. */
export const spansBodySchema = z
  .object({ spans: z.array(spanInputSchema).min(1, 'must hold at least one span') })
  .strict()
  .superRefine((body, ctx) => {
    const seen = new Map<string, number>();
    body.spans.forEach((span, i) => {
      const key = `${span.trace_id}/${span.span_id}`;
      const first = seen.get(key);
      if (first !== undefined) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['spans', i, 'span_id'], message: `duplicates spans[${first}] (same trace_id and span_id)` });
      } else seen.set(key, i);
    });
  });

export const spanKeySchema = z.object({ trace_id: traceIdSchema, span_id: spanIdSchema }).strict();
export const spanKeysBodySchema = z.object({ spans: z.array(spanKeySchema).min(1, 'must hold at least one span') }).strict();
