import { Reader } from 'protobufjs/minimal';

/** Decodes a google.rpc.Status (code: field 1, message: field 2), as an OTLP exporter reads an error answer. */
export function decodeRpcStatus(bytes: Uint8Array): { code: number; message: string } {
  const reader = Reader.create(bytes);
  const status = { code: 0, message: '' };
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    if (tag >>> 3 === 1) status.code = reader.int32();
    else if (tag >>> 3 === 2) status.message = reader.string();
    else reader.skipType(tag & 7);
  }
  return status;
}

/** An error answer's message, JSON or (for a binary OTLP export) protobuf google.rpc.Status. */
export function errorMessageOf(res: { contentType: string; bytes: Buffer; json: unknown }): string | undefined {
  if (res.contentType.startsWith('application/x-protobuf')) return decodeRpcStatus(res.bytes).message;
  const message = (res.json as { message?: unknown } | undefined)?.message;
  return typeof message === 'string' ? message : undefined;
}
