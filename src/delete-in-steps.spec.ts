import { deleteInSteps } from './delete-in-steps';

describe('deleteInSteps', () => {
  /** A step over `rows` rows in all, recording what each call was asked for. */
  const stepsOver = (rows: number) => {
    let left = rows;
    const asked: number[] = [];
    const step = async (atMost: number) => {
      asked.push(atMost);
      const taken = Math.min(atMost, left);
      left -= taken;
      return Array.from({ length: taken }, (_, i) => i);
    };
    return { step, asked, left: () => left };
  };

  it.each([
    [0, 1],
    [7, 3],
    [9, 4],
    [10, 4],
  ])('deletes %i rows in steps of 3, in %i calls, and counts them all', async (rows, calls) => {
    const run = stepsOver(rows);
    expect(await deleteInSteps(run.step, 3)).toBe(rows);
    expect(run.asked).toEqual(Array(calls).fill(3));
    expect(run.left()).toBe(0);
  });

  it('stops at a failed step, leaving the steps before it done', async () => {
    const run = stepsOver(10);
    let calls = 0;
    const failing = async (atMost: number) => {
      if (++calls === 2) throw new Error('statement timeout');
      return run.step(atMost);
    };
    await expect(deleteInSteps(failing, 3)).rejects.toThrow('statement timeout');
    expect(run.left()).toBe(7);
  });
});
