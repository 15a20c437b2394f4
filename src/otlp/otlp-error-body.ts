import type { Request } from 'express';
import { Writer } from 'protobufjs/minimal';

export const OTLP_PROTOBUF = 'application/x-protobuf';

/**
 * OTLP/HTTP answers a failed binary export with a protobuf google.rpc.Status
 * (the specification's "Failures"), which exporters decode to report why.
 * Returns that body for an error answer to such a request, or null for any
 * other request (JSON errors as everywhere else; OTLP/JSON exporters read
 * their `message`). Status.code is left out, as the specification allows:
 * clients act on the HTTP status.
 */
export function otlpProtobufErrorBody(request: Request, message: string): Buffer | null {
  const contentType = (request.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (!request.path.startsWith('/otlp/') || contentType !== OTLP_PROTOBUF) return null;
  // google.rpc.Status: field 2 (message), wire type 2 (length-delimited).
  return Buffer.from(Writer.create().uint32((2 << 3) | 2).string(message).finish());
}
