import { z } from 'zod';
import { jsonArraySchema, jsonObjectSchema, textSchema } from '../../http/json-value';
import { orderRules, timestampSchema } from '../../tracing/dto/span.schema';
import { integerRangeMessage, MAX_CURSOR_LENGTH, MAX_LIMIT } from '../../tracing/span-query.parser';

export const uuidSchema = z
  .string()
  .regex(/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/, 'must be a UUID')
  .transform((s) => s.toLowerCase());

export const nodeInputSchema = z
  .object({
    node_id: uuidSchema,
    tree_id: uuidSchema,
    root_id: uuidSchema.nullable().default(null),
    parent_id: uuidSchema.nullable().default(null),
    node_name: textSchema(z.string().min(1, 'must not be empty').max(1024)),
    node_type: textSchema(z.string().min(1, 'must not be empty').max(64)).default('unknown'),
    time_start: timestampSchema,
    time_end: timestampSchema,
    status: z
      .object({ code: textSchema(z.string().min(1, 'must not be empty').max(64)), message: textSchema(z.string().max(10_000)).nullable().default(null) })
      .strict()
      .default({ code: 'UNSET', message: null }),
    data: jsonObjectSchema.nullable().default(null),
    metrics: jsonObjectSchema.nullable().default(null),
    meta: jsonObjectSchema.nullable().default(null),
    refs: jsonObjectSchema.nullable().default(null),
    exception: jsonObjectSchema.nullable().default(null),
    links: jsonArraySchema.nullable().default(null),
    otel: jsonObjectSchema.nullable().default(null),
  })
  .strict()
  .superRefine((node, ctx) => {
    orderRules.endNotBeforeStart(node, ctx, 'time_start', 'time_end');
    orderRules.notOwnParent(node, ctx, 'node_id', 'parent_id');
  });

export const nodesBodySchema = z
  .object({ nodes: z.array(nodeInputSchema).min(1, 'must hold at least one node') })
  .strict()
  .superRefine((body, ctx) => {
    const seen = new Map<string, number>();
    body.nodes.forEach((node, i) => {
      const first = seen.get(node.node_id);
      if (first !== undefined) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['nodes', i, 'node_id'], message: `duplicates nodes[${first}]` });
      else seen.set(node.node_id, i);
    });
  });

const LIMIT_MESSAGE = integerRangeMessage(1, MAX_LIMIT);
const CURSOR_MESSAGE = 'expected a cursor returned as "next" by a previous page';

/**
 * An optional part that null leaves out, as in span queries (span-query.parser.ts): clients often send
 * explicit nulls for what they do not set, and a page's own `next` is null on the last page.
 */
const absentIfNull = <T extends z.ZodTypeAny>(schema: T) => schema.nullish().transform((value): z.output<T> | undefined => value ?? undefined);

export const nodeQuerySchema = z
  .object({
    tree_id: absentIfNull(uuidSchema),
    // Empty would read as "no filter" below; no node has an empty name or type (ingest refuses them).
    node_type: absentIfNull(textSchema(z.string().min(1, 'must not be empty').max(64))),
    node_name: absentIfNull(textSchema(z.string().min(1, 'must not be empty').max(1024))),
    oldest: absentIfNull(timestampSchema).describe('Inclusive lower bound on time_start'),
    newest: absentIfNull(timestampSchema).describe('Exclusive upper bound on time_start'),
    // A JSON number only, as windowing.limit in span queries: coercion took "5", true and [3] as limits.
    limit: absentIfNull(z.number({ invalid_type_error: LIMIT_MESSAGE }).int(LIMIT_MESSAGE).min(1, LIMIT_MESSAGE).max(MAX_LIMIT, LIMIT_MESSAGE)).describe(
      'Nodes per page, at most MAX_RESPONSE_ITEMS: a page may hold fewer, and `next` being null, not the count, says it is the last',
    ),
    next: absentIfNull(z.string({ invalid_type_error: CURSOR_MESSAGE }).regex(/^[A-Za-z0-9_-]+$/, CURSOR_MESSAGE).max(MAX_CURSOR_LENGTH, CURSOR_MESSAGE)).describe(
      "The previous page's `next`, with the same tree_id, node_type, node_name and window (another is a 400; the limit may change)",
    ),
  })
  .strict()
  .superRefine(orderRules.newestAfterOldest);
