/**
 * `work`'s outcome, or `onTimeout()`'s if `work` has not settled within `ms`
 * (`work` itself goes on; nothing here can cancel it). The timer is cleared
 * when `work` settles first, and never keeps the process alive.
 */
export async function within<T, F>(work: Promise<T>, ms: number, onTimeout: () => F): Promise<T | F> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<F>((resolve, reject) => {
    timer = setTimeout(() => {
      try {
        resolve(onTimeout());
      } catch (error) {
        reject(error);
      }
    }, ms);
    timer.unref();
  });
  try {
    return await Promise.race([work, timedOut]);
  } finally {
    clearTimeout(timer);
  }
}
