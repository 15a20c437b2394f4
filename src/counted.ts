/** `n` and the noun, plural unless n is 1: "1 row", "0 rows", "2 batches" (with `plural`). For operators' messages and logs. */
export const counted = (n: number, noun: string, plural = `${noun}s`): string => `${n} ${n === 1 ? noun : plural}`;
