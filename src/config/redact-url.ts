/** A URL fit for logs and messages: its password, if any (in the userinfo or a password= parameter), replaced by ***. */
export function redactUrl(url: string): string {
  return url.replace(/\/\/([^:@/]*):([^@/]+)@/, '//$1:***@').replace(/([?&]password=)[^&#]*/gi, '$1***');
}
