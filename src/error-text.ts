/**
 * An error as one line: its message, else its first inner error's (with its
 * code), else its code. Node can report connections refused at every address
 * of a host (localhost: ::1 and 127.0.0.1) as an AggregateError whose
 * message is empty: printed as it is, the operator would read "error: ".
 */
export function errorText(error: unknown): string {
  return whatItSays(error) || String(error);
}

function whatItSays(error: unknown): string {
  const e = error as { message?: unknown; code?: unknown; errors?: unknown[] } | null | undefined;
  if (typeof e?.message === 'string' && e.message !== '') return e.message;
  const inner = Array.isArray(e?.errors) && e.errors.length > 0 ? whatItSays(e.errors[0]) : '';
  const code = typeof e?.code === 'string' ? e.code : '';
  if (inner && code && !inner.includes(code)) return `${code} (${inner})`;
  return inner || code;
}
