import { createHash, randomBytes } from 'node:crypto';

/**
 * API keys are 32 random bytes, shown once at creation. Only a sha256 hash
 * is stored: with that much entropy a slow password hash adds nothing, and
 * a fast one keeps the per-request check cheap.
 */
const KEY_PREFIX = 'tk_';

export function generateApiKey(): string {
  return `${KEY_PREFIX}${randomBytes(32).toString('base64url')}`;
}

export function hashApiKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

/** The first characters, safe to show and log to tell keys apart. */
export function displayPrefix(key: string): string {
  return key.slice(0, KEY_PREFIX.length + 6);
}

/** The key from `Authorization: ApiKey <key>`, or null if the header is missing or malformed. */
export function keyFromAuthorization(header: string | undefined): string | null {
  if (!header) return null;
  const m = /^ApiKey\s+(\S{1,200})$/i.exec(header.trim());
  return m ? m[1] : null;
}
