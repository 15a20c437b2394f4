import { resolve } from 'node:path';
import { parseFlags } from './flags';

const ROOT = resolve(__dirname, '../..');
const backfill = resolve(ROOT, 'scripts/backfill.ts');
/** The environment npm gives `npm run backfill --dry-run` (no "--"): the flag as its own config, none for the command. */
const npmRunBackfill = { npm_lifecycle_event: 'backfill', npm_lifecycle_script: 'exec node --import tsx scripts/backfill.ts', npm_config_dry_run: 'true' };

describe('parseFlags and the flags npm keeps for itself', () => {
  const parse = (args: string[], env: NodeJS.ProcessEnv, entry = backfill) => () => parseFlags(args, ['--project'], ['--dry-run'], env, entry);

  it('refuses a flag of the command that npm took, naming the fix', () => {
    expect(parse([], npmRunBackfill)).toThrow('npm kept --dry-run for itself: `npm run` passes a command only what follows "--". Run it as `npm run backfill -- <options>`');
  });

  it('takes the flag when the command was given it too (after "--")', () => {
    expect(parse(['--dry-run'], npmRunBackfill)().switches).toEqual(new Set(['--dry-run']));
  });

  it('looks only when npm ran this very command, not one a process npm ran started', () => {
    // The local ClickHouse under `npm start --host=...`, load's verify, a spec's command under `npm test`.
    const clickhouse = resolve(ROOT, 'scripts/clickhouse-local/main.ts');
    expect(parse([], { npm_lifecycle_event: 'start', npm_lifecycle_script: 'node dist/src/main.js', npm_config_dry_run: 'true' }, clickhouse)().switches.size).toBe(0);
    expect(parse([], { ...npmRunBackfill, npm_lifecycle_script: 'exec node --import tsx scripts/load.ts' })().switches.size).toBe(0);
    expect(parse([], { npm_config_dry_run: 'true' })().switches.size).toBe(0);
  });
});
