/** The Kysely<DB> instance over the app's pg Pool. */
export const KYSELY = Symbol('KYSELY');
/** The pg Pool itself (health checks, shutdown). */
export const PG_POOL = Symbol('PG_POOL');
