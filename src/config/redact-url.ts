/**
 * A URL fit for logs and messages: its password, if any (in the userinfo or a
 * password= parameter, or keyword), replaced by ***. The userinfo's password runs to the
 * last `@`: drivers take a password holding `@` or `/` (a base64 one), and
 * one holding `?`, `#` or a line break fails URL parsing, whose error quotes
 * the URL; stopping at any of them would print the rest. The user name may
 * hold an `@` too (Azure's `user@server`). A later `@` (in the path or a
 * parameter) only hides more than the password.
 */
export function redactUrl(url: string): string {
  return url.replace(/\/\/([^:/]*):[\s\S]*@/, '//$1:***@').replace(/(\bpassword=)[^&#\s]*/gi, '$1***');
}
