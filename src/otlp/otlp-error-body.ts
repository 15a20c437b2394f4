import type { Request } from 'express';
import { Writer } from 'protobufjs/minimal';

export const OTLP_PROTOBUF = 'application/x-protobuf';

/**
 * The google.rpc.Code an HTTP error status stands for (google.rpc.Code's own
 * HTTP mapping): exporters act on the HTTP status, but a Status decoded
 * without a code would read as OK (0).
 */
const RPC_CODE_BY_HTTP_STATUS: Record<number, number> = {
  400: 3, // INVALID_ARGUMENT
  401: 16, // UNAUTHENTICATED
  403: 7, // PERMISSION_DENIED
  404: 5, // NOT_FOUND
  409: 6, // ALREADY_EXISTS
  413: 3, // INVALID_ARGUMENT: the request itself is too large
  415: 3, // INVALID_ARGUMENT
  429: 8, // RESOURCE_EXHAUSTED
  500: 13, // INTERNAL
  503: 14, // UNAVAILABLE
  504: 4, // DEADLINE_EXCEEDED
};

/**
 * OTLP/HTTP answers a failed binary export with a protobuf google.rpc.Status
 * (the specification's "Failures"), which exporters decode to report why.
 * Returns that body for an error answer to such a request, or null for any
 * other request (JSON errors as everywhere else; OTLP/JSON exporters read
 * their `message`).
 */
export function otlpProtobufErrorBody(request: Request, status: number, message: string): Buffer | null {
  const contentType = (request.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (!request.path.startsWith('/otlp/') || contentType !== OTLP_PROTOBUF) return null;
  const code = RPC_CODE_BY_HTTP_STATUS[status] ?? (status >= 500 ? 13 : 3);
  // google.rpc.Status: code is field 1 (varint), message field 2 (length-delimited).
  return Buffer.from(Writer.create().uint32((1 << 3) | 0).int32(code).uint32((2 << 3) | 2).string(message).finish());
}
