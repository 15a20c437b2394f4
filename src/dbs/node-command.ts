import { pathToFileURL } from 'node:url';

/**
 * How to run one of this project's entry points as a process of its own (the
 * local ClickHouse server, the embedded Postgres keeper): from sources its
 * .ts through tsx, once compiled the .js beside the build. `entry` is the
 * absolute path without the extension.
 */
export function nodeCommand(entry: string): { command: string; args: string[] } {
  const fromSources = __filename.endsWith('.ts');
  const loader = fromSources ? ['--import', pathToFileURL(require.resolve('tsx')).href] : [];
  return { command: process.execPath, args: [...loader, `${entry}${fromSources ? '.ts' : '.js'}`] };
}
