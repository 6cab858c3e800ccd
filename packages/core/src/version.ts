/** Version of `@tessera/core` (kept equal to package.json by a test). */
export const CORE_VERSION = '0.1.0';
