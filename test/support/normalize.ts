/**
 * An API answer with what legitimately differs between two apps blanked out
 * (server clocks, the project id), so transcripts of the same calls can be
 * compared for equality.
 */
export function normalize(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(normalize);
  if (value && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [k, ['created_at', 'updated_at', 'project_id'].includes(k) ? '<server>' : normalize(v)]),
    );
  }
  return value;
}
