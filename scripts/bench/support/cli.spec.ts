import { BenchFlags } from './cli';

const USAGE = `usage: bench -- [options]
  --rounds N      rounds
  --modes A,B     modes
  --quick         smoke run`;

/** BenchFlags exits with usage on a bad flag; here that exit becomes an error carrying what it printed. */
function parse(argv: string[]): BenchFlags {
  const exit = jest.spyOn(process, 'exit').mockImplementation((code) => {
    throw new Error(`exit ${code}: ${stderr.mock.calls.map((c) => String(c[0]).split('\n')[0]).join(' ')}`);
  });
  const stderr = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
  try {
    return new BenchFlags(argv, USAGE);
  } finally {
    exit.mockRestore();
    stderr.mockRestore();
  }
}

describe('BenchFlags', () => {
  it('reads the flags its usage lists', () => {
    const flags = parse(['--rounds', '3', '--modes=off,down', '--quick']);
    expect(flags.int('rounds', 5)).toBe(3);
    expect(flags.names('modes', ['off', 'up', 'down'], ['off'])).toEqual(['off', 'down']);
    expect(flags.has('quick')).toBe(true);
  });

  it('refuses a flag its usage does not list, instead of ignoring it', () => {
    expect(() => parse(['--mode', 'off'])).toThrow('exit 2: unknown flag --mode');
  });

  it('refuses a name outside the choices', () => {
    const flags = parse(['--modes', 'off,sideways']);
    const exit = jest.spyOn(process, 'exit').mockImplementation((code) => {
      throw new Error(`exit ${code}`);
    });
    const stderr = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      expect(() => flags.names('modes', ['off', 'up', 'down'], ['off'])).toThrow('exit 2');
      expect(String(stderr.mock.calls[0][0])).toContain('got "off,sideways"');
    } finally {
      exit.mockRestore();
      stderr.mockRestore();
    }
  });
});
