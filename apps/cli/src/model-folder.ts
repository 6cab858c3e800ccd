import {
  loadModel,
  PluginError,
  readManifest,
  UnknownLayerError,
  type layers,
  type ModelManifest,
} from '@tessera/core';
import { loadRegistry, warnPluginVersion, type LoadedRegistry } from './plugins.js';

/**
 * Turns a model that cannot be rebuilt because of an unregistered layer class into the error that says why: the
 * architecture's installed plugin was skipped (its own error), is installed but does not declare the class in
 * `layers`, or is not installed.
 */
export function explainModelLoadError(
  error: unknown,
  plugins: LoadedRegistry,
  manifest: ModelManifest,
  dir: string,
): unknown {
  if (!(error instanceof UnknownLayerError)) return error;
  const { name, version } = manifest.architecture;
  const skipped = plugins.skipped.find((s) => s.name === name);
  if (skipped) return skipped.error;
  if (plugins.registry.has(name)) {
    const plugin = plugins.registry.get(name);
    const source = plugins.registry.origin(name).source;
    return new PluginError(
      `The model ${dir} has a layer of class "${error.className}" that architecture "${name}" ${plugin.version} ` +
        `(${source}) does not register, so it cannot be rebuilt here.`,
      `The plugin must list the class in its "layers" rather than register it in build(); ` +
        `"tessera check-plugin ${source.replace(/^(package|file) /, '')}" shows what else its loading path misses.`,
    );
  }
  return new UnknownLayerError(
    error.className,
    `Could not rebuild the network of ${dir}: it was made by architecture "${name}" ${version ?? ''}, which is not ` +
      `installed here, and has a layer of class "${error.className}".`.replace(' ,', ','),
    `Install the plugin of "${name}" beside the CLI (tessera archs lists the installed architectures).`,
    error,
  );
}

/**
 * Loads a model folder after the installed plugins (so their layer classes are registered), warning when the model
 * was made by another version of its plugin, and explaining layers that no plugin registers.
 */
export async function loadModelFolder(dir: string): Promise<{ model: layers.LayersModel; manifest: ModelManifest }> {
  const plugins = await loadRegistry();
  const manifest = await readManifest(dir);
  warnPluginVersion(plugins, manifest, dir);
  try {
    return await loadModel(dir);
  } catch (error) {
    throw explainModelLoadError(error, plugins, manifest, dir);
  }
}
