/** A URL fit for logs and messages: its password, if any, replaced by ***. */
export function redactUrl(url: string): string {
  return url.replace(/\/\/([^:@/]+):([^@/]+)@/, '//$1:***@');
}
