import { z } from 'zod';
import { Json } from '../tracing/span';

/**
 * JSON payloads (attributes, events, ...) are stored as Postgres jsonb and
 * ClickHouse strings. jsonb rejects U+0000 and unpaired surrogates, so those
 * are refused here with a clear message instead of failing the write later.
 * Numbers arrive parsed by JSON.parse: an integer it would round was refused
 * in the body's text before (exact-integers.ts), since here it is already
 * the nearest double.
 */
export const MAX_JSON_DEPTH = 32;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function stringProblem(s: string): string | null {
  if (s.includes('\u0000')) return 'must not contain the NUL character (U+0000)';
  if (LONE_SURROGATE.test(s)) return 'must be valid UTF-16 text (unpaired surrogate)';
  return null;
}

/** The first problem in a JSON value, as [path, reason], or null when it is fine. */
export function jsonProblem(value: unknown, path: (string | number)[] = [], depth = 0): [(string | number)[], string] | null {
  if (depth > MAX_JSON_DEPTH) return [path, `is nested deeper than ${MAX_JSON_DEPTH} levels`];
  if (value === null || typeof value === 'boolean') return null;
  if (typeof value === 'number') return Number.isFinite(value) ? null : [path, 'must be a finite number'];
  if (typeof value === 'string') {
    const problem = stringProblem(value);
    return problem ? [path, problem] : null;
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const p = jsonProblem(value[i], [...path, i], depth + 1);
      if (p) return p;
    }
    return null;
  }
  if (typeof value === 'object') {
    for (const [key, child] of Object.entries(value as object)) {
      const keyProblem = stringProblem(key);
      if (keyProblem) return [[...path, key], `key ${keyProblem}`];
      const p = jsonProblem(child, [...path, key], depth + 1);
      if (p) return p;
    }
    return null;
  }
  return [path, 'must be JSON'];
}

function checked<T extends z.ZodTypeAny>(schema: T) {
  return schema.superRefine((value, ctx) => {
    const problem = jsonProblem(value);
    if (problem) ctx.addIssue({ code: z.ZodIssueCode.custom, path: problem[0], message: problem[1] });
  }) as unknown as z.ZodType<z.infer<T>, z.ZodTypeDef, z.input<T>>;
}

/**
 * Text fields (names, messages, codes) follow the same rules as strings inside
 * JSON: Postgres text refuses U+0000, and node-postgres would silently turn an
 * unpaired surrogate into U+FFFD, storing something other than what was sent.
 */
export function textSchema(schema: z.ZodString) {
  return schema.superRefine((value, ctx) => {
    const problem = stringProblem(value);
    if (problem) ctx.addIssue({ code: z.ZodIssueCode.custom, message: problem });
  });
}

/** How the OpenAPI document shows a JSON object field (see openApiSchema). */
export const JSON_OBJECT_DESCRIPTION = 'any JSON object';
const recordCheck = z.record(z.string(), z.unknown());

/**
 * A JSON object, checked as a record but passed on as it was sent: zod
 * builds a record's output by assignment and leaves out a "__proto__" key,
 * which in JSON is a key like any other (JSON.parse makes it an own
 * property). A span's attributes would otherwise lose it without a word.
 */
const jsonObject = z
  .custom<{ [key: string]: unknown }>()
  .superRefine((value, ctx) => {
    const result = recordCheck.safeParse(value);
    if (!result.success) for (const issue of result.error.issues) ctx.addIssue(issue);
  })
  .describe(JSON_OBJECT_DESCRIPTION);

export const jsonObjectSchema = checked(jsonObject) as z.ZodType<{ [key: string]: Json }>;
export const jsonArraySchema = checked(z.array(z.unknown())) as z.ZodType<Json[]>;
