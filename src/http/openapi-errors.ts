import type { OpenAPIObject } from '@nestjs/swagger';

/** The body of every error answer HttpExceptionFilter gives. */
const ERROR_SCHEMA = {
  type: 'object',
  required: ['statusCode', 'error', 'message'],
  properties: {
    statusCode: { type: 'integer', example: 400 },
    error: { type: 'string', example: 'Bad Request' },
    message: { type: 'string', example: 'spans[0].span_id: must be 16 hex characters' },
    errors: {
      type: 'array',
      description: 'Validation errors only: each invalid field and why',
      items: { type: 'object', properties: { field: { type: 'string' }, message: { type: 'string' } } },
    },
  },
};

const METHODS = ['get', 'put', 'post', 'delete', 'patch'] as const;

/**
 * Adds to every operation the error answers that come from outside its
 * handler: the API-key guard (401), validation of ids and bodies (400), the
 * body and batch limits (413), a body of another media type (415), a database that is unavailable (503) and the
 * filter's last resort (500). Routes declare only their own answers (404,
 * 409, ...) with @ApiResponse; a description a route gives is kept, and
 * every error answer of a guarded route gets the filter's body.
 */
export function documentErrorAnswers(document: OpenAPIObject): OpenAPIObject {
  document.components = { ...document.components, schemas: { ...document.components?.schemas, Error: ERROR_SCHEMA } };
  const errorBody = { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } };
  for (const path of Object.values(document.paths)) {
    for (const method of METHODS) {
      const operation = path[method];
      if (!operation) continue;
      const add = (status: number, description: string) => (operation.responses[status] ??= { description, content: errorBody });
      add(500, 'Internal error; logged, with no internals in the answer');
      // Public routes (health, metrics) answer for themselves; every other route is behind the guard and Postgres.
      if (!operation.security?.length) continue;
      add(400, 'Invalid id, body or query; `errors` names each field and why');
      add(401, 'Missing or malformed Authorization header, or an unknown or revoked API key');
      add(503, 'The database is unavailable (down, refusing connections or not answering); retry later');
      if (operation.requestBody || method === 'post' || method === 'put') {
        add(413, 'Body larger than BODY_LIMIT, or more items than MAX_BATCH_ITEMS');
        add(415, 'A body that is not application/json (see RequestBodies)');
      }
      for (const [status, response] of Object.entries(operation.responses)) {
        if (Number(status) >= 400 && response && 'description' in response) response.content ??= errorBody;
      }
    }
  }
  return document;
}
