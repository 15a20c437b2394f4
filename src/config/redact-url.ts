/**
 * A URL fit for logs and messages: its password, if any (in the userinfo or a
 * password= parameter), replaced by ***. The userinfo's password runs to the
 * last `@` before any query: drivers take a password holding `@` or `/` (a
 * base64 one), and stopping at the first would print the rest of it. A later
 * `@` in the path only hides more than the password.
 */
export function redactUrl(url: string): string {
  return url.replace(/\/\/([^:@/]*):[^?#]*@/, '//$1:***@').replace(/([?&]password=)[^&#]*/gi, '$1***');
}
