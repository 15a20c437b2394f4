import { createHash, randomBytes } from 'node:crypto';

/**
 * API keys are 32 random bytes, shown once at creation. Only a sha256 hash
 * is stored: with that much entropy a slow password hash adds nothing, and
 * a fast one keeps the per-request check cheap.
 */
const KEY_PREFIX = 'tk_';
/** What generateApiKey makes: the prefix and 32 bytes as 43 base64url characters. */
const KEY_SHAPE = /^tk_[A-Za-z0-9_-]{43}$/;

export function generateApiKey(): string {
  return `${KEY_PREFIX}${randomBytes(32).toString('base64url')}`;
}

/**
 * Whether `key` could be one generateApiKey made. Anything else is refused
 * without a lookup: unknown keys are not cached, so junk keys would
 * otherwise cost a Postgres query each, from the pool requests need.
 */
export function couldBeApiKey(key: string): boolean {
  return KEY_SHAPE.test(key);
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
