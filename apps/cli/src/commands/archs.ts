import { countParameters, setupEngine } from '@tessera/core';
import { loadRegistry } from '../plugins.js';

/** `tessera archs`: installed architectures with options, defaults, parameter counts and origin. */
export async function archsCommand(opts: { json?: boolean; arch?: string }): Promise<void> {
  await setupEngine();
  const { registry } = await loadRegistry(opts.arch);
  const rows = registry.list().map((plugin) => {
    const model = plugin.build({ inputChannels: 3, numClasses: 2, options: plugin.defaults });
    const parameters = countParameters(model);
    model.dispose();
    return {
      name: plugin.name,
      version: plugin.version,
      description: plugin.description,
      source: registry.origin(plugin.name).source,
      inputMultiple: plugin.inputMultiple(plugin.defaults),
      receptiveField: plugin.receptiveField(plugin.defaults),
      parameters,
      options: Object.fromEntries(
        Object.entries(plugin.optionsSchema).map(([key, spec]) => [
          key,
          { ...spec, default: (plugin.defaults as Record<string, unknown>)[key] },
        ]),
      ),
    };
  });
  if (opts.json) {
    process.stdout.write(JSON.stringify(rows, null, 2) + '\n');
    return;
  }
  for (const r of rows) {
    process.stdout.write(`${r.name} ${r.version}  ${r.description}\n`);
    process.stdout.write(
      `  from ${r.source}; ${r.parameters.toLocaleString('en-US')} parameters (3 channels in, 2 classes); input multiple ${r.inputMultiple}; receptive field ${r.receptiveField} px\n`,
    );
    for (const [key, spec] of Object.entries(r.options)) {
      const range = spec.choices
        ? ` one of ${spec.choices.join('|')}`
        : spec.min !== undefined || spec.max !== undefined
          ? ` [${spec.min ?? ''}..${spec.max ?? ''}]`
          : '';
      process.stdout.write(
        `    --arch-option ${key}=${String(spec.default)}  (${spec.type}${range}) ${spec.description}\n`,
      );
    }
  }
}
