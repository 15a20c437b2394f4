import { runInWriteScope, WriteScope } from '../write-scope';
import { MirrorPlan, MirrorTarget, mirrorWrites, READS } from './mirrored-dao';

interface Row {
  id: number;
}

/** A DAO port in miniature: two writes, a read, and a field. */
class FakeDao {
  readonly name = 'fake';
  constructor(private readonly stored: Row[] = []) {}
  async create(rows: Row[]): Promise<Row[]> {
    this.stored.push(...rows);
    return rows;
  }
  async broken(): Promise<Row[]> {
    throw new Error('Postgres refused the write');
  }
  async read(): Promise<Row[]> {
    return this.stored;
  }
}

const notUsedHere = () => {
  throw new Error('not used here');
};

const plan: MirrorPlan<FakeDao, Row> = {
  entity: 'spans',
  methods: { create: (row) => ({ ...row }), broken: (row) => ({ ...row }), read: READS },
  toGapRow: notUsedHere,
  toLine: notUsedHere,
};

/** Checked by the compiler (npm test runs tsc): a plan must say of every method whether it writes. */
export const incompletePlan: MirrorPlan<FakeDao, Row> = {
  entity: 'spans',
  // @ts-expect-error `read` is missing: a new port method cannot pass through unmirrored by omission
  methods: { create: (row) => ({ ...row }), broken: (row) => ({ ...row }) },
  toGapRow: notUsedHere,
  toLine: notUsedHere,
};

/** Nor can a method that does not resolve to rows be planned as a write. */
class DaoWithACount extends FakeDao {
  async count(): Promise<number> {
    return 0;
  }
}
export const countAsWrite: MirrorPlan<DaoWithACount, Row> = {
  entity: 'spans',
  methods: {
    create: (row) => ({ ...row }),
    broken: (row) => ({ ...row }),
    read: READS,
    // @ts-expect-error count resolves to a number, not the rows it committed
    count: (row: Row) => ({ ...row }),
  },
  toGapRow: notUsedHere,
  toLine: notUsedHere,
};

/** A mirror that only records what the decorator tells it. */
function recordingMirror(acceptThrows = false) {
  const events: string[] = [];
  let inFlight = 0;
  const mirror: MirrorTarget = {
    started: () => {
      inFlight++;
      events.push('started');
      return () => {
        inFlight--;
        events.push('settled');
      };
    },
    accept: (_plan, rows) => {
      events.push(`accept ${rows.length}`);
      if (acceptThrows) throw new Error('mirror fault');
    },
    failed: (entity, error) => events.push(`failed ${entity}: ${(error as Error).message}`),
    outcomeUnknown: (entity, method, projectId, error) => events.push(`outcome unknown ${entity}.${method} (${JSON.stringify(projectId)}): ${(error as Error).message}`),
  };
  return { mirror, events, inFlight: () => inFlight };
}

describe('mirrorWrites', () => {
  it('hands a write’s committed rows to the mirror after Postgres resolved, and returns the DAO’s result itself', async () => {
    const { mirror, events, inFlight } = recordingMirror();
    const dao = mirrorWrites(new FakeDao(), plan, mirror);
    const rows = [{ id: 1 }, { id: 2 }];
    const pending = dao.create(rows);
    expect(events).toEqual(['started']);
    expect(inFlight()).toBe(1);
    await expect(pending).resolves.toBe(rows);
    expect(events).toEqual(['started', 'accept 2', 'settled']);
    expect(inFlight()).toBe(0);
  });

  it('leaves reads and fields alone: nothing is handed over, methods keep their receiver', async () => {
    const { mirror, events } = recordingMirror();
    const dao = mirrorWrites(new FakeDao([{ id: 7 }]), plan, mirror);
    expect(dao.name).toBe('fake');
    const read = dao.read;
    await expect(read()).resolves.toEqual([{ id: 7 }]);
    // What every object has from Object.prototype is not in the plan either: answered as it is, not as a write.
    expect(dao.toString()).toBe('[object Object]');
    expect(dao.hasOwnProperty('name')).toBe(true);
    expect(events).toEqual([]);
  });

  it('a write Postgres refused reaches the caller as it is; nothing is handed over and the write still settles', async () => {
    const { mirror, events, inFlight } = recordingMirror();
    const dao = mirrorWrites(new FakeDao(), plan, mirror);
    await expect(dao.broken()).rejects.toThrow('Postgres refused the write');
    expect(events).toEqual(['started', 'settled']);
    expect(inFlight()).toBe(0);
  });

  it('a write cut off without saying whether it committed is reported to the mirror, and reaches the caller as it is', async () => {
    const cutOff = [
      new Error('Query read timeout'),
      new Error('Connection terminated unexpectedly'),
      Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }),
      Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01' }),
      // A COMMIT given up on: Kysely's ROLLBACK on the closed client replaces its error.
      new Error('Client was closed and is not queryable'),
    ];
    // The server answered these: the write did not commit.
    const refused = [
      Object.assign(new Error('duplicate key value violates unique constraint'), { code: '23505' }),
      Object.assign(new Error('canceling statement due to statement timeout'), { code: '57014' }),
      Object.assign(new Error('cannot execute INSERT in a read-only transaction'), { code: '25006' }),
      Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED', syscall: 'connect' }),
      Object.assign(new Error('connect ETIMEDOUT 10.0.0.1:5432'), { code: 'ETIMEDOUT', syscall: 'connect' }),
      // What pg-pool says when a new connection does not open within connectionTimeoutMillis.
      new Error('Connection terminated due to connection timeout'),
      new Error('timeout exceeded when trying to connect'),
    ];
    for (const error of [...cutOff, ...refused]) {
      const { mirror, events } = recordingMirror();
      const failing = new FakeDao();
      failing.create = async () => {
        throw error;
      };
      const dao = mirrorWrites(failing, plan, mirror);
      await expect(dao.create([{ id: 1 }])).rejects.toBe(error);
      // The port's first argument is the project (here the fake's rows), passed on for the log line.
      const reported = cutOff.includes(error) ? [`outcome unknown spans.create ([{"id":1}]): ${error.message}`] : [];
      expect(events).toEqual(['started', ...reported, 'settled']);
    }
  });

  describe('inside a WriteScope (writes that commit together)', () => {
    const inScope = async (write: (dao: FakeDao) => Promise<unknown>) => {
      const recording = recordingMirror();
      const scope = new WriteScope(null);
      const dao = mirrorWrites(new FakeDao(), plan, recording.mirror);
      const outcome = await runInWriteScope(scope, () => write(dao)).then(
        () => 'resolved',
        (error: Error) => error.message,
      );
      return { ...recording, scope, outcome };
    };

    it('hands the rows over once the scope has committed, and settles then', async () => {
      const { events, inFlight, scope } = await inScope((dao) => dao.create([{ id: 1 }, { id: 2 }]));
      expect(events).toEqual(['started']);
      expect(inFlight()).toBe(1);
      scope.end({ committed: true });
      expect(events).toEqual(['started', 'accept 2', 'settled']);
      expect(inFlight()).toBe(0);
    });

    it('hands nothing over when the scope rolls back', async () => {
      const { events, scope } = await inScope((dao) => dao.create([{ id: 1 }]));
      scope.end({ committed: false, unknown: false, error: new Error('a later write of the scope failed') });
      expect(events).toEqual(['started', 'settled']);
    });

    it('reports a commit whose outcome is unknown, and hands nothing over', async () => {
      const { events, scope } = await inScope((dao) => dao.create([{ id: 1 }]));
      scope.end({ committed: false, unknown: true, error: new Error('Query read timeout') });
      expect(events).toEqual(['started', 'outcome unknown spans.create ([{"id":1}]): Query read timeout', 'settled']);
    });

    it('a write that fails in a scope rolls it back: not reported as unknown, whatever the error', async () => {
      const { events, outcome } = await inScope(async (dao) => {
        dao.create = async () => {
          throw new Error('Query read timeout');
        };
        return dao.create([{ id: 1 }]);
      });
      expect(outcome).toBe('Query read timeout');
      expect(events).toEqual(['started', 'settled']);
    });
  });

  it('a write that resolves to something other than its rows is counted as failed; the caller gets its result', async () => {
    const { mirror, events } = recordingMirror();
    const odd = new FakeDao();
    (odd as unknown as { create: () => Promise<unknown> }).create = async () => ({ created: 1 });
    const dao = mirrorWrites(odd, plan, mirror);
    await expect(dao.create([{ id: 1 }])).resolves.toEqual({ created: 1 });
    expect(events).toEqual(['started', 'failed spans: create resolved to object, not the rows it committed', 'settled']);
  });

  it('a fault in the mirror never reaches the caller, whose write has committed', async () => {
    const { mirror, events } = recordingMirror(true);
    const dao = mirrorWrites(new FakeDao(), plan, mirror);
    await expect(dao.create([{ id: 1 }])).resolves.toEqual([{ id: 1 }]);
    expect(events).toEqual(['started', 'accept 1', 'failed spans: mirror fault', 'settled']);
  });
});
