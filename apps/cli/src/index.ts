/** `@tessera/cli`: the `tessera` command. Programmatic entry points for scripts and tests. */
export { buildProgram, main, CLI_VERSION } from './main.js';
export { findPluginPackages, loadRegistry, PLUGIN_PATTERNS } from './plugins.js';
export { MALLOC_SETTINGS, mallocEnvironment } from './allocator.js';
export {
  findModelPackages,
  listModelPackages,
  MODEL_PACKAGE_PATTERNS,
  readModelPackage,
  resolveModelReference,
  type ModelPackage,
  type ModelPackageEntry,
  type ModelPackageField,
  type ResolvedModel,
} from './model-packages.js';
