import { Inject, Injectable } from '@nestjs/common';
import { Kysely, sql } from 'kysely';
import { DB } from '../dbs/postgres/database';
import { KYSELY } from '../dbs/postgres/postgres.tokens';

@Injectable()
export class ApiKeysRepository {
  constructor(@Inject(KYSELY) private readonly db: Kysely<DB>) {}

  insert(projectId: string, keyHash: string, prefix: string) {
    return this.db
      .insertInto('api_keys')
      .values({ project_id: projectId, key_hash: keyHash, prefix })
      .returning(['id', 'project_id', 'prefix', 'created_at'])
      .executeTakeFirstOrThrow();
  }

  findActiveByHash(keyHash: string) {
    return this.db
      .selectFrom('api_keys')
      .select(['id', 'project_id'])
      .where('key_hash', '=', keyHash)
      .where('revoked_at', 'is', null)
      .executeTakeFirst();
  }

  revoke(id: string) {
    return this.db.updateTable('api_keys').set({ revoked_at: sql`now()` }).where('id', '=', id).where('revoked_at', 'is', null).executeTakeFirst();
  }

  list(projectId?: string) {
    let q = this.db.selectFrom('api_keys').select(['id', 'project_id', 'prefix', 'created_at', 'revoked_at']).orderBy('created_at');
    if (projectId) q = q.where('project_id', '=', projectId);
    return q.execute();
  }
}
