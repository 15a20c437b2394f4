/**
 * How an error message repeats what the caller sent: cut to a length a
 * reader can use. A 400 that echoed a 9 MB value whole sent it back twice
 * (in `message` and in `errors`), and a log line with it.
 */
export const ECHO_MAX_CHARS = 64;

/** The text, cut to ECHO_MAX_CHARS with an ellipsis. */
export function cut(text: string, max = ECHO_MAX_CHARS): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

/** The text cut, as a JSON string (quotes and escapes show exactly what was sent). */
export function quoted(text: string): string {
  return JSON.stringify(cut(text));
}

/** The first `max` items, cut, then how many more there were. */
export function listed(items: string[], max = 5): string {
  const shown = items.slice(0, max).map((item) => cut(item)).join(', ');
  return items.length > max ? `${shown} and ${items.length - max} more` : shown;
}
