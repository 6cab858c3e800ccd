import { PluginError, unknownName } from '../errors.js';
import { validatePlugin, type ArchitecturePlugin } from './architecture.js';
import type { OnnxLayerConverter } from './onnx-converter.js';
import { registerPluginLayers } from './plugin-layers.js';

/** Where a registered plugin came from, shown by `tessera archs`. */
export interface PluginOrigin {
  /** `builtin`, a package name, or a file path. */
  source: string;
}

/**
 * An explicit registry of architecture plugins (no global state).
 *
 * @example
 * ```ts
 * const registry = new ArchitectureRegistry();
 * registry.register(unet());
 * const plugin = registry.get('unet');
 * ```
 */
export class ArchitectureRegistry {
  private readonly plugins = new Map<string, { plugin: ArchitecturePlugin<object>; origin: PluginOrigin }>();

  /**
   * Adds a plugin after checking its name, apiVersion and functions, and registers its `layers` for model loading.
   * @throws PluginError when the name is already registered or the plugin breaks the contract.
   */
  register(plugin: ArchitecturePlugin<any>, origin: PluginOrigin = { source: 'builtin' }): this {
    const checked = validatePlugin(plugin, origin.source);
    const existing = this.plugins.get(checked.name);
    if (existing) {
      throw new PluginError(
        `An architecture named "${checked.name}" is already registered (from ${existing.origin.source}); ` +
          `refusing the one from ${origin.source}.`,
        'Give the plugin another name, or install only one of the two packages.',
      );
    }
    registerPluginLayers(checked, `architecture "${checked.name}" from ${origin.source}`);
    this.plugins.set(checked.name, { plugin: checked, origin });
    return this;
  }

  /** True when `name` is registered. */
  has(name: string): boolean {
    return this.plugins.has(name);
  }

  /**
   * The plugin registered under `name`.
   * @throws UnknownNameError with a "did you mean" suggestion and the valid names.
   */
  get(name: string): ArchitecturePlugin<object> {
    const entry = this.plugins.get(name);
    if (!entry) {
      throw unknownName('architecture', name, this.names(), 'Run "tessera archs" to list installed architectures.');
    }
    return entry.plugin;
  }

  /** Where the plugin registered under `name` came from. */
  origin(name: string): PluginOrigin {
    this.get(name);
    return this.plugins.get(name)!.origin;
  }

  /** Registered names in registration order. */
  names(): string[] {
    return [...this.plugins.keys()];
  }

  /** Registered plugins in registration order. */
  list(): ArchitecturePlugin<object>[] {
    return [...this.plugins.values()].map((e) => e.plugin);
  }

  /**
   * The ONNX converters of every registered plugin, by layer class name. Plugins may list the same converter (those of
   * a shared encoder); two different converters for one class are refused.
   * @throws PluginError naming the class and both plugins.
   */
  onnxConverters(): Record<string, OnnxLayerConverter> {
    const merged: Record<string, OnnxLayerConverter> = {};
    const from: Record<string, string> = {};
    for (const { plugin, origin } of this.plugins.values()) {
      for (const [className, converter] of Object.entries(plugin.onnxConverters ?? {})) {
        if (merged[className] !== undefined && merged[className] !== converter) {
          throw new PluginError(
            `Architectures "${from[className]}" and "${plugin.name}" (from ${origin.source}) both bring an ONNX ` +
              `converter for layer class "${className}", and they differ: one would silently replace the other.`,
            'Give each layer class a className of its own, prefixed with the plugin name, or install only one of the two.',
          );
        }
        merged[className] = converter;
        from[className] = plugin.name;
      }
    }
    return merged;
  }
}
