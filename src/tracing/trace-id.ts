/**
 * An OTel trace id is 32 hex characters, exactly 128 bits: the same bits as a
 * UUID. Postgres and ClickHouse store it as a uuid, and a trace's node tree
 * uses it as its tree_id; this is the one conversion all of them share.
 */
const HEX_TRACE_ID = /^[0-9a-f]{32}$/i;

export function traceIdToUuid(traceId: string): string {
  if (!HEX_TRACE_ID.test(traceId)) throw new Error(`trace id must be 32 hex characters, got "${traceId}"`);
  const h = traceId.toLowerCase();
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function uuidToTraceId(uuid: string): string {
  return uuid.replace(/-/g, '').toLowerCase();
}
