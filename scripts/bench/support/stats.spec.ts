import { median, quantile, shuffled, spread } from './stats';

describe('median', () => {
  it('is the middle value for an odd count and the mean of the middle two for an even one', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(spread([0.9, 1.1])).toEqual({ min: 0.9, median: 1, max: 1.1 });
    expect(median([])).toBeNaN();
  });

  it('leaves the nearest-rank p50 of latencies as it was: a value that was measured', () => {
    expect(quantile([4, 1, 3, 2], 0.5)).toBe(2);
  });
});

describe('shuffled', () => {
  const modes = ['off', 'off2', 'up', 'down', 'null'] as const;

  it('is a permutation, the same for the same seed', () => {
    for (let seed = 0; seed < 50; seed++) {
      const order = shuffled(modes, seed);
      expect([...order].sort()).toEqual([...modes].sort());
      expect(shuffled(modes, seed)).toEqual(order);
    }
  });

  it('over rounds puts each item after each other one, unlike a rotation', () => {
    const followers = new Map<string, Set<string>>(modes.map((m) => [m, new Set()]));
    for (let round = 0; round < 40; round++) {
      const order = shuffled(modes, 1 + round);
      for (let i = 1; i < order.length; i++) followers.get(order[i - 1])!.add(order[i]);
    }
    for (const mode of modes) expect(followers.get(mode)!.size).toBe(modes.length - 1);
  });
});
