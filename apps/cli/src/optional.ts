/**
 * Imports an optional peer dependency on first use: its module, or `null` when the package itself is not installed
 * (a missing dependency *of* the package is a real failure and is thrown).
 */
export function importOptional<T>(name: string, load: () => Promise<T>): () => Promise<T | null> {
  let loading: Promise<T | null> | undefined;
  return () =>
    (loading ??= load().catch((error: unknown) => {
      const e = error as { code?: string; message?: string };
      if (e?.code === 'ERR_MODULE_NOT_FOUND' && String(e.message).includes(`'${name}'`)) return null;
      if (e?.code === 'ERR_MODULE_NOT_FOUND' && String(e.message).includes(`"${name}"`)) return null;
      throw error;
    }));
}
