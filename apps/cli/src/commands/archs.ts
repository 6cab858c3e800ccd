import { InvalidOptionError, countFlops, countParameters, setupEngine } from '@tessera/core';
import { loadRegistry } from '../plugins.js';

/**
 * `tessera archs`: installed architectures with options, defaults, parameter counts, FLOPs of one forward pass on a
 * `tile` x `tile` RGB tile (default 256, rounded up to each architecture's input multiple) and origin.
 */
export async function archsCommand(opts: { json?: boolean; arch?: string; tile?: number }): Promise<void> {
  const tile = opts.tile ?? 256;
  if (!Number.isInteger(tile) || tile < 1 || tile > 16384) {
    throw new InvalidOptionError(
      `Expected an integer between 1 and 16384 for --tile but received ${String(opts.tile)}.`,
    );
  }
  await setupEngine();
  const { registry } = await loadRegistry(opts.arch);
  const rows = registry.list().map((plugin) => {
    const model = plugin.build({ inputChannels: 3, numClasses: 2, options: plugin.defaults, tileSize: tile });
    const parameters = countParameters(model);
    const multiple = plugin.inputMultiple(plugin.defaults);
    const flopsTile = Math.ceil(tile / multiple) * multiple;
    const flops = countFlops(model, [1, flopsTile, flopsTile, 3]);
    model.dispose();
    return {
      name: plugin.name,
      version: plugin.version,
      description: plugin.description,
      source: registry.origin(plugin.name).source,
      inputMultiple: plugin.inputMultiple(plugin.defaults),
      receptiveField: plugin.receptiveField(plugin.defaults),
      parameters,
      flops,
      flopsTile,
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
    process.stdout.write(
      `  ${(r.flops / 1e9).toFixed(2)} GFLOPs per ${r.flopsTile}x${r.flopsTile} tile (2 per multiply-add of the convolutions)\n`,
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
