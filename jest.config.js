/**
 * One jest run covers unit specs (beside the code in src/) and integration and
 * end-to-end specs (test/). The global setup provides real servers once per
 * run (see test/support/servers.ts); each spec then gets its own databases.
 */
module.exports = {
  rootDir: __dirname,
  testEnvironment: 'node',
  moduleFileExtensions: ['ts', 'js', 'json'],
  testMatch: ['<rootDir>/src/**/*.spec.ts', '<rootDir>/test/**/*.spec.ts', '<rootDir>/scripts/**/*.spec.ts'],
  transform: {
    // Type checking is done once by `tsc --noEmit` in `npm test`; jest only transpiles.
    '^.+\\.ts$': ['ts-jest', { tsconfig: '<rootDir>/tsconfig.jest.json', diagnostics: false }],
  },
  globalSetup: '<rootDir>/test/support/global-setup.ts',
  globalTeardown: '<rootDir>/test/support/global-teardown.ts',
  testTimeout: 60_000,
  maxWorkers: 2,
  // Each worker keeps hundreds of MB of heap live across the test files it runs
  // (measured: 550-820 MB RSS per worker at the end of a run). Tearing that down
  // natively takes jest's workers 1.3-2.2 s, past jest's 500 ms grace, which
  // prints "A worker process has failed to exit gracefully" though no handle is
  // open. Recycling a worker once it idles above 512 MB keeps the heaps small:
  // no message in measured runs, and the suite ran faster (119 s vs 137 s).
  workerIdleMemoryLimit: '512MB',
};
