import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { ArchitectureRegistry, PluginError, type ArchitecturePlugin } from '@tessera/core';

/** Package-name patterns of architecture plugins the CLI discovers. */
export const PLUGIN_PATTERNS = [/^@tessera\/arch-[a-z0-9-]+$/, /^tessera-arch-[a-z0-9-]+$/];

function nodeModulesChain(start: string): string[] {
  const dirs: string[] = [];
  let dir = resolve(start);
  for (;;) {
    const nm = join(dir, 'node_modules');
    if (existsSync(nm)) dirs.push(nm);
    const parent = dirname(dir);
    if (parent === dir) return dirs;
    dir = parent;
  }
}

/** Names of installed plugin packages visible from `cwd` and from the CLI's own location. */
export function findPluginPackages(cwd = process.cwd()): Map<string, string> {
  const found = new Map<string, string>();
  const here = dirname(fileURLToPath(import.meta.url));
  for (const nm of [...nodeModulesChain(cwd), ...nodeModulesChain(here)]) {
    const names: string[] = [];
    for (const entry of safeReaddir(nm)) {
      if (entry.startsWith('tessera-arch-')) names.push(entry);
      if (entry === '@tessera') for (const sub of safeReaddir(join(nm, '@tessera'))) names.push(`@tessera/${sub}`);
    }
    for (const name of names) {
      if (PLUGIN_PATTERNS.some((re) => re.test(name)) && !found.has(name)) found.set(name, nm);
    }
  }
  return found;
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

async function importPlugin(
  specifier: string,
  fromDir: string,
  source: string,
): Promise<{ plugin: ArchitecturePlugin<object>; url: string }> {
  let url: string;
  if (specifier.startsWith('.') || isAbsolute(specifier)) {
    const path = resolve(specifier);
    if (!existsSync(path)) {
      throw new PluginError(`Architecture plugin file ${path} does not exist.`, 'Check the path given to --arch.');
    }
    url = pathToFileURL(path).href;
  } else {
    try {
      url = pathToFileURL(createRequire(join(fromDir, 'noop.js')).resolve(specifier)).href;
    } catch (error) {
      throw new PluginError(
        `Architecture plugin package "${specifier}" cannot be resolved from ${fromDir}: ${(error as Error).message.split('\n')[0]}`,
        `Install it: npm install ${specifier}`,
      );
    }
  }
  const mod = (await import(url)) as { default?: unknown; plugin?: unknown };
  const exported = mod.default ?? mod.plugin;
  const plugin = typeof exported === 'function' ? (exported as () => unknown)() : exported;
  if (!plugin || typeof plugin !== 'object') {
    throw new PluginError(
      `${source} does not export an architecture plugin: its default export should be a factory function returning one.`,
    );
  }
  return { plugin: plugin as ArchitecturePlugin<object>, url };
}

/** True when `--arch` names a file or package to load rather than a registered name. */
export function isPluginReference(arch: string): boolean {
  return (
    arch.startsWith('.') ||
    isAbsolute(arch) ||
    arch.endsWith('.js') ||
    arch.endsWith('.mjs') ||
    PLUGIN_PATTERNS.some((re) => re.test(arch))
  );
}

/**
 * A registry of every installed architecture plugin, plus one loaded from a file path or package name.
 * Returns the registry and the registered name of the extra plugin.
 */
export async function loadRegistry(
  extra?: string,
): Promise<{ registry: ArchitectureRegistry; extraName?: string; modules: string[] }> {
  const registry = new ArchitectureRegistry();
  const modules: string[] = [];
  const packages = findPluginPackages();
  // The default architecture first.
  const ordered = [...packages.keys()].sort((a, b) =>
    a === '@tessera/arch-unet' ? -1 : b === '@tessera/arch-unet' ? 1 : a.localeCompare(b),
  );
  for (const name of ordered) {
    if (extra === name) continue;
    const { plugin, url } = await importPlugin(name, dirname(packages.get(name)!), `package ${name}`);
    registry.register(plugin, { source: `package ${name}` });
    modules.push(url);
  }
  let extraName: string | undefined;
  if (extra && isPluginReference(extra)) {
    const source = extra.startsWith('.') || isAbsolute(extra) ? `file ${resolve(extra)}` : `package ${extra}`;
    const { plugin, url } = await importPlugin(extra, process.cwd(), source);
    if (registry.has(plugin.name)) return { registry, extraName: plugin.name, modules };
    registry.register(plugin, { source });
    modules.push(url);
    extraName = plugin.name;
  }
  return { registry, extraName, modules };
}
