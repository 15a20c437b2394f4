import { Kysely } from 'kysely';
import { ApiKeyService } from '../src/auth/api-key.service';
import { ApiKeysRepository } from '../src/auth/api-keys.repository';
import { parseConfig } from '../src/config/app-config';
import { DB } from '../src/dbs/postgres/database';
import { resolvePostgres } from '../src/dbs/postgres/local-postgres';
import { createKysely, createPool } from '../src/dbs/postgres/postgres-pool';
import { migrateToLatest } from '../src/dbs/postgres/postgres-migrator';
import { runCli, UsageError } from './cli/run-cli';

const USAGE = `usage: npm run apikey -- <command>

  create --project <uuid>   create a key for a project; the key is printed alone on the last line
  list [--project <uuid>]   list keys (prefixes only; keys are stored hashed)
  revoke --id <key id>      revoke a key`;

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function option(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  if (i === -1) return undefined;
  const value = args[i + 1];
  if (!value || value.startsWith('--')) throw new UsageError(`${name} needs a value`);
  return value;
}

function uuidOption(args: string[], name: string): string | undefined {
  const value = option(args, name);
  if (value !== undefined && !UUID_RE.test(value)) throw new UsageError(`${name} must be a UUID, got "${value}"`);
  return value?.toLowerCase();
}

runCli(USAGE, async (args, log) => {
  const [command] = args;
  if (!['create', 'list', 'revoke'].includes(command ?? '')) throw new UsageError(command ? `unknown command "${command}"` : 'missing command');
  const projectId = uuidOption(args, '--project');
  const id = uuidOption(args, '--id');
  if (command === 'create' && !projectId) throw new UsageError('create needs --project <uuid>');
  if (command === 'revoke' && !id) throw new UsageError('revoke needs --id <key id>');

  const config = parseConfig();
  const server = await resolvePostgres(config.postgres, log);
  const db: Kysely<DB> = createKysely(createPool(server.url, 1));
  try {
    if (config.postgres.migrateOnStart) await migrateToLatest(db);
    const keys = new ApiKeyService(new ApiKeysRepository(db));
    if (command === 'create') {
      const created = await keys.create(projectId!);
      log(`created key ${created.id} (${created.prefix}…) for project ${created.projectId}; store it now, it is not shown again`);
      process.stdout.write(`${created.key}\n`);
    } else if (command === 'list') {
      for (const k of await keys.list(projectId)) {
        process.stdout.write(`${k.id}  ${k.project_id}  ${k.prefix}…  created ${k.created_at}${k.revoked_at ? `  revoked ${k.revoked_at}` : ''}\n`);
      }
    } else {
      if (!(await keys.revoke(id!))) throw new Error(`no active key with id ${id}`);
      log(`revoked key ${id}`);
    }
  } finally {
    await db.destroy();
    await server.stop?.();
  }
});
