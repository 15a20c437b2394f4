import { ApiKeyService } from '../src/auth/api-key.service';
import { ApiKeysRepository } from '../src/auth/api-keys.repository';
import { parseConfig } from '../src/config/app-config';
import { prepareSchema } from '../src/dbs/postgres/postgres-migrator';
import { parseFlags } from './cli/flags';
import { openPostgres } from './cli/postgres-cli';
import { runCli, UsageError } from './cli/run-cli';
import { isUuid } from '../src/uuid';

const USAGE = `usage: npm run apikey -- <command>

  create --project <uuid>   create a key for a project; the key is printed alone on the last line
  list [--project <uuid>]   list keys (prefixes only; keys are stored hashed)
  revoke --id <key id>      revoke a key; running APIs refuse it within ${ApiKeyService.TRUST_SECONDS} s`;


/** Each command's flags, and whether it needs them: anything else is refused before Postgres is touched. */
const COMMANDS: Record<string, { flag: '--project' | '--id'; required: boolean }> = {
  create: { flag: '--project', required: true },
  list: { flag: '--project', required: false },
  revoke: { flag: '--id', required: true },
};

function parseArgs(args: string[]): { command: string; projectId?: string; id?: string } {
  const [command, ...rest] = args;
  const shape = COMMANDS[command ?? ''];
  if (!shape) throw new UsageError(command ? `unknown command "${command}"` : 'missing command');
  const value = parseFlags(rest, [shape.flag], []).values.get(shape.flag);
  if (value === undefined) {
    if (shape.required) throw new UsageError(`${command} needs ${shape.flag} <${shape.flag === '--id' ? 'key id' : 'uuid'}>`);
    return { command };
  }
  if (!isUuid(value)) throw new UsageError(`${shape.flag} must be a UUID, got "${value}"`);
  return { command, [shape.flag === '--id' ? 'id' : 'projectId']: value.toLowerCase() };
}

runCli(USAGE, async (args, log) => {
  const { command, projectId, id } = parseArgs(args);
  const config = parseConfig();
  const { db, redactedUrl, close } = await openPostgres(config, log, 1);
  try {
    const { applied } = await prepareSchema(db, config.postgres.migrateOnStart, { where: redactedUrl, warn: (line) => log(`warning: ${line}`) });
    if (applied.length) log(`applied migrations: ${applied.join(', ')}`);
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
      log(`revoked key ${id}; running APIs refuse it within ${ApiKeyService.TRUST_SECONDS} s (they trust a key they checked for that long)`);
    }
  } finally {
    await close();
  }
});
