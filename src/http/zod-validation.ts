import { BadRequestException } from '@nestjs/common';
import { z } from 'zod';
import { ignoreOverride, zodToJsonSchema } from 'zod-to-json-schema';
import { listed, quoted } from '../echo';
import { JSON_OBJECT_DESCRIPTION } from './json-value';

export interface FieldError {
  field: string;
  message: string;
}

/** spans[3].attributes.a — the path a user can find in their own request. */
export function formatPath(path: (string | number)[]): string {
  return path.reduce<string>((acc, part) => (typeof part === 'number' ? `${acc}[${part}]` : acc ? `${acc}.${part}` : part), '');
}

/** Each issue with the field it concerns; `whole` names the value itself (the body, a path parameter). */
export function fieldErrors(error: z.ZodError, whole = '(body)'): FieldError[] {
  return error.issues.map((issue) => ({ field: formatPath(issue.path) || whole, message: issueMessage(issue) }));
}

function issueMessage(issue: z.ZodIssue): string {
  if (issue.code === z.ZodIssueCode.invalid_type) {
    if (issue.received === 'undefined') return 'is required';
    // A schema that words its own refusal (invalid_type_error) keeps it: a limit says what it must be, as span queries do.
    if (issue.message !== z.defaultErrorMap(issue, { defaultError: issue.message, data: undefined }).message) return issue.message;
    return `must be ${issue.expected}, got ${issue.received}`;
  }
  if (issue.code === z.ZodIssueCode.unrecognized_keys) return `unknown field(s): ${listed(issue.keys)}`;
  if (issue.code === z.ZodIssueCode.invalid_enum_value) return `must be one of ${issue.options.join(', ')}, got ${quoted(String(issue.received))}`;
  return issue.message;
}

/** Parses a request body, or answers 400 naming each field and why. */
export function parseBody<T extends z.ZodTypeAny>(schema: T, body: unknown): z.output<T> {
  return parseOrRefuse(schema, body, '(body)');
}

/** Parses a path parameter (or an object of them), or answers 400 naming each bad one (`traceId: must be 32 hex characters`). */
export function parseParam<T extends z.ZodTypeAny>(schema: T, value: unknown, name: string): z.output<T> {
  return parseOrRefuse(schema, value, name);
}

function parseOrRefuse<T extends z.ZodTypeAny>(schema: T, value: unknown, whole: string): z.output<T> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const errors = fieldErrors(result.error, whole);
  throw new BadRequestException({
    statusCode: 400,
    error: 'Bad Request',
    message: errors
      .slice(0, 5)
      .map((e) => `${e.field}: ${e.message}`)
      .join('; '),
    errors,
  });
}

/** The same schema, as OpenAPI for @ApiBody: one definition of each body. */
export function openApiSchema(schema: z.ZodTypeAny): Record<string, unknown> {
  const json = zodToJsonSchema(schema as never, {
    target: 'openApi3',
    $refStrategy: 'none',
    // A JSON object field is checked by hand (json-value.ts), which the converter cannot see through.
    override: (def) => ((def as { description?: string }).description === JSON_OBJECT_DESCRIPTION ? { type: 'object', additionalProperties: {}, description: JSON_OBJECT_DESCRIPTION } : ignoreOverride),
  }) as Record<string, unknown>;
  delete json.$schema;
  return json;
}
